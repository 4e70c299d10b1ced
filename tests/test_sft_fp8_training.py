"""AMXFP8_SFT in the training scenarios of test_sft_training.py (spec 3.2): micro-batches accumulate
like one batch, and 50 AdamW steps from zero-initialised B fit a LoRA target on the FP8 base (blocks
of 128) at least 10x, with base weights and inputs left bit-identical. The scenarios are
test_sft_training's own functions, called here with AMXFP8_SFT (that module's METHODS list does not
name it yet); adding ("AMXFP8_SFT", {}) to that list would make this file unnecessary."""

import pytest
import torch

import test_sft_training as training

METHOD, OPTIONS = "AMXFP8_SFT", {}


def test_micro_batches_accumulate_like_one_batch():
    training.test_micro_batches_accumulate_like_one_batch(METHOD, OPTIONS)


@pytest.mark.parametrize("lora_dtype", [torch.bfloat16, torch.float32])
def test_adamw_fits_a_lora_target(lora_dtype):
    training.test_adamw_fits_a_lora_target(METHOD, OPTIONS, lora_dtype)
