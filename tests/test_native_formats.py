"""Loading FP8 and RAWINT4 (inference) and AMXFP8_SFT experts in their native formats fp8 and
int4_packed (kt_moe/weights/checkpoint_formats.py, docs/design.md section 5): quantized checkpoints
are read in place, so the engine must hold exactly the checkpoint's bytes.

- Checkpoints written by hand (tests/quant_checkpoints.py: block FP8 at blocks of 128 and 64, one
  file and shards, deepseek and mixtral names; Kimi-K2 pack-quantized INT4 in groups of 32) and by
  compressed-tensors itself (pack-quantized INT4, FP8 per channel, FP8 per block): a wrapper built on
  the checkpoint picks its format option, load_weights with a permuted map gives outputs bit-equal to
  load_weights_from_tensors of the same parts, and the engine's stored parts (stored_parts) are the
  checkpoint's tensors (bf16 scales kept as fp32: the same values), also for a tensor-parallel slice.
- bf16 weights (tensors or a bf16 checkpoint) are quantized online exactly as scheme.quantize does.
- Bad checkpoints (a missing or misshapen scale, an FP8 NaN code, a non-finite scale, a config.json
  that changed since the wrapper was built or names a format the method does not read) are a
  ValueError naming the tensor or the config key, and the failed load changes nothing.
- Memory: one expert's resident bytes at DeepSeek-V2-Lite's shape are the checkpoint's bytes.
- AMXFP8_SFT trains on an FP8 checkpoint loaded in place, and AMXINT4_KGroup_SFT on a pack-quantized
  INT4 one, kept as it ships.

Shape: H = 160 and I = 192 leave partial FP8 blocks of 128 (and of 64 along H) and are whole INT4
groups of 32; with two subpools (I / 2 = 96) a slice of down starts inside a 64-block.
"""

import json

import pytest
import torch

import sft_helpers
from hf_fixtures import expert_tensor_names, save_tensors, write_hf_checkpoint
from inference_helpers import Shape, make_layer, make_wrapper
from quant_checkpoints import (fp8_block_quantization_config, kimi_quantization_config, read_checkpoint,
                               write_compressed_tensors_checkpoint, write_fp8_checkpoint, write_int4_packed_checkpoint)

SHAPE = Shape(num_experts=4, hidden=160, intermediate=192)
LAYER, TOP_K = 1, 3
MAP = torch.tensor([2, 0, 3, 1])  # physical slot -> logical expert
MATRICES = ("gate", "up", "down")
LAST_EXPERT = int(MAP[-1])  # loaded last: a failure there comes after every other slot was staged


def layer_weights(seed=0):
    """(layer, {LAYER: (gate, up, down)}) of random bf16 experts, logical order, slot p holding MAP[p]."""
    layer = make_layer(SHAPE, seed=seed, physical_map=MAP)
    return layer, {LAYER: (layer.gate, layer.up, layer.down)}


def module(e, matrix, naming="deepseek"):
    """The checkpoint's module name of expert e's matrix ("gate", "up" or "down")."""
    return expert_tensor_names(LAYER, e, naming)[MATRICES.index(matrix)].removesuffix(".weight")


def checkpoint_parts(tensors, wrapper, suffixes, naming="deepseek"):
    """gate, up, down as load_weights_from_tensors takes them: for each matrix the checkpoint tensors
    `{module}.{suffix}` stacked over the logical experts, in the dtype and shape of the wrapper's scheme
    (a bf16 scale [N, 1] becomes fp32 [N]: exact)."""
    H, I = SHAPE.hidden, SHAPE.intermediate
    out = []
    for matrix, (n, k) in zip(MATRICES, ((I, H), (I, H), (H, I))):
        specs = wrapper.scheme.part_specs(n, k).values()
        out.append([torch.stack([tensors[f"{module(e, matrix, naming)}.{suffix}"].to(dtype).reshape(shape)
                                 for e in range(SHAPE.num_experts)])
                    for suffix, (shape, dtype) in zip(suffixes, specs)])
    return out


def stored(wrapper, slot, matrix, slice_=0):
    """The engine's parts of a slot's matrix in a slice, as flat uint8 tensors."""
    parts = wrapper.engine.stored_parts(slot, matrix, slice_)
    return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in parts]


def raw(t):
    """A tensor's bytes, row-major, as a flat uint8 tensor."""
    return t.contiguous().view(-1).view(torch.uint8)


def forward_all_slots(wrapper, layer):
    """The output of a batch routed to every slot."""
    x, ids, weights = layer.batch(16, TOP_K, seed=1)
    ids[:SHAPE.num_experts, 0] = torch.arange(SHAPE.num_experts)
    return wrapper.forward(x, ids, weights)


def assert_loads_in_place(directory, method, option, suffixes, naming="deepseek"):
    """The wrapper built on `directory` picks `option`; load_weights equals load_weights_from_tensors of
    the checkpoint's parts (bit for bit); the stored parts are the checkpoint's values."""
    layer, _ = layer_weights()
    wrapper = make_wrapper(SHAPE, method=method, top_k=TOP_K, layer_idx=LAYER, weight_path=str(directory))
    assert wrapper.format_option == option
    assert (wrapper.scheme.name, wrapper.scheme.group_size) == (wrapper.engine.weight_format, option)
    wrapper.load_weights(MAP)

    tensors = read_checkpoint(directory)
    parts = checkpoint_parts(tensors, wrapper, suffixes, naming)
    from_tensors = make_wrapper(SHAPE, method=method, top_k=TOP_K, layer_idx=LAYER, weight_path=str(directory))
    from_tensors.load_weights_from_tensors(*parts, MAP)
    assert torch.equal(forward_all_slots(wrapper, layer), forward_all_slots(from_tensors, layer))

    for slot in (0, SHAPE.num_experts - 1):
        for m, matrix in enumerate(MATRICES):
            kept_parts = stored(wrapper, slot, matrix)
            assert len(kept_parts) == len(suffixes)
            for suffix, part, kept in zip(suffixes, parts[m], kept_parts):
                assert torch.equal(kept, raw(part[MAP[slot]])), f"slot {slot} {matrix} {suffix}"
                original = tensors[f"{module(int(MAP[slot]), matrix, naming)}.{suffix}"]
                assert torch.equal(part[MAP[slot]].to(original.dtype).reshape(original.shape), original)


# ---- checkpoints written by hand -----------------------------------------------------------------

@pytest.mark.parametrize("block,naming,shards", [(128, "deepseek", 1), (64, "mixtral", 1), (64, "deepseek", 3),
                                                 (128, "mixtral", 2)])
def test_block_fp8_checkpoint_loads_in_place(tmp_path, block, naming, shards):
    _, layers = layer_weights()
    directory = write_fp8_checkpoint(tmp_path, layers, block=block, scheme=naming, shards=shards)
    assert_loads_in_place(directory, "FP8", block, ("weight", "weight_scale_inv"), naming)


@pytest.mark.parametrize("shards", [1, 2])
def test_int4_packed_checkpoint_loads_in_place(tmp_path, shards):
    _, layers = layer_weights()
    directory = write_int4_packed_checkpoint(tmp_path, layers, group_size=32, shards=shards)
    assert_loads_in_place(directory, "RAWINT4", 32, ("weight_packed", "weight_scale"))


@pytest.mark.parametrize("slice_", [0, 1])
def test_slices_keep_the_units_that_cover_them(tmp_path, slice_):
    """Two subpools, FP8 in blocks of 64, I / 2 = 96: slice 0 holds rows [0, 96) of gate and up with the
    scale rows of blocks 0 and 1, and columns [0, 96) of down with the scale columns of blocks 0 and 1;
    slice 1 rows / columns [96, 192) with blocks 1 and 2 (block 1 is in both)."""
    _, layers = layer_weights()
    directory = write_fp8_checkpoint(tmp_path, layers, block=64)
    wrapper = make_wrapper(SHAPE, method="FP8", top_k=TOP_K, layer_idx=LAYER, weight_path=str(directory), tp=2)
    wrapper.load_weights(MAP)
    tensors = read_checkpoint(directory)
    slot, Is = 1, SHAPE.intermediate // 2
    values, blocks = slice(slice_ * Is, (slice_ + 1) * Is), slice(slice_, slice_ + 2)
    for matrix in MATRICES:
        weight, scale = (tensors[f"{module(int(MAP[slot]), matrix)}.{s}"] for s in ("weight", "weight_scale_inv"))
        if matrix == "down":
            expected = [weight[:, values], scale[:, blocks]]
        else:
            expected = [weight[values], scale[blocks]]
        kept = stored(wrapper, slot, matrix, slice_)
        assert [torch.equal(k, raw(t)) for k, t in zip(kept, expected)] == [True, True], matrix


# ---- checkpoints written by compressed-tensors -----------------------------------------------------

CT_CASES = [  # (compressed-tensors format, method, the wrapper's option, the tensors of each matrix)
    ("int4_packed", "RAWINT4", 32, ("weight_packed", "weight_scale")),
    ("fp8_channel", "FP8", 0, ("weight", "weight_scale")),
    ("fp8_block", "FP8", 32, ("weight", "weight_scale")),
]


@pytest.mark.parametrize("fmt,method,option,suffixes", CT_CASES, ids=[c[0] for c in CT_CASES])
def test_compressed_tensors_checkpoint_loads_in_place(tmp_path, fmt, method, option, suffixes):
    """The FP8 scales are bf16 here ([N, 1] per channel, the block grid per block); the engine keeps
    them as fp32, the same values."""
    pytest.importorskip("compressed_tensors")
    _, layers = layer_weights()
    directory = write_compressed_tensors_checkpoint(tmp_path, layers, fmt, group_size=32, block=32)
    assert_loads_in_place(directory, method, option, suffixes)


# ---- bf16 weights, quantized online ----------------------------------------------------------------

BF16_CASES = [  # (method, config.json's quantization_config: None for the defaults, 128 and 32)
    ("FP8", None), ("FP8", fp8_block_quantization_config(64)), ("RAWINT4", None)]


@pytest.mark.parametrize("method,quantization_config", BF16_CASES, ids=["FP8-128", "FP8-64", "RAWINT4-32"])
def test_bf16_weights_are_quantized_like_the_scheme(tmp_path, method, quantization_config):
    """load_weights_from_tensors of bf16 weights and load_weights of a bf16 checkpoint both equal
    loading scheme.quantize's parts of those weights (the option from config.json when it has one)."""
    layer, layers = layer_weights(seed=2)
    write_hf_checkpoint(tmp_path, layers, shards=2)
    if quantization_config is not None:
        config = {"quantization_config": quantization_config}
        (tmp_path / "config.json").write_text(json.dumps(config))
    # with a quantized config.json, load_weights would read quantized parts, not these bf16 tensors
    loads = ["tensors", "parts"] + (["checkpoint"] if quantization_config is None else [])
    outputs = []
    for load in loads:
        wrapper = make_wrapper(SHAPE, method=method, top_k=TOP_K, layer_idx=LAYER, weight_path=str(tmp_path))
        if load == "tensors":
            layer.load(wrapper)
        elif load == "checkpoint":
            wrapper.load_weights(MAP)
        else:
            parts = [[torch.stack(p) for p in zip(*(wrapper.scheme.quantize(w[e]) for e in range(len(w))))]
                     for w in (layer.gate, layer.up, layer.down)]
            wrapper.load_weights_from_tensors(*parts, MAP)
        outputs.append(forward_all_slots(wrapper, layer))
    assert all(torch.equal(out, outputs[0]) for out in outputs[1:])


# ---- errors: ValueError naming the tensor or key, and nothing loaded -----------------------------------

def rewrite_tensors(directory, change):
    """Apply change(tensors) to the single-file checkpoint in `directory` and write it back."""
    tensors = {name: t.clone() for name, t in read_checkpoint(directory).items()}
    change(tensors)
    save_tensors(directory, tensors)


def rewrite_quantization_config(directory, quantization_config):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = quantization_config
    path.write_text(json.dumps(config))


def drop(name):
    return lambda tensors: tensors.pop(name)


def replace(name, make):
    def change(tensors):
        tensors[name] = make(tensors[name])
    return change


def set_fp8_code(name, index, code):
    def change(tensors):
        tensors[name].view(torch.uint8)[index] = code
    return change


def set_value(name, index, value):
    def change(tensors):
        tensors[name][index] = value
    return change


FP8_GATE, FP8_UP, FP8_DOWN = (module(LAST_EXPERT, m) for m in MATRICES)
INT4_DOWN = module(LAST_EXPERT, "down")
ERROR_CASES = {  # id: (method, damage to the checkpoint, message regex)
    "missing-scale": ("FP8", drop(f"{FP8_DOWN}.weight_scale_inv"),
                      rf"^1 expert tensor\(s\) missing for layer {LAYER} in .*: {FP8_DOWN}\.weight_scale_inv$"),
    "scale-shape": ("FP8", replace(f"{FP8_UP}.weight_scale_inv", lambda t: t[:, :1].contiguous()),
                    rf"^{FP8_UP}\.weight_scale_inv in .*model\.safetensors: expected shape \[2, 2\], got \[2, 1\]$"),
    "fp8-nan-code": ("FP8", set_fp8_code(f"{FP8_GATE}.weight", (3, 5), 0x7F),
                     rf"^gate of expert {LAST_EXPERT} \({FP8_GATE}\.weight in .*\) must be finite: its FP8 weight "
                     r"holds NaN at \[3, 5\]$"),
    "fp8-negative-nan-code": ("FP8", set_fp8_code(f"{FP8_GATE}.weight", (0, 0), 0xFF),
                              rf"^gate of expert {LAST_EXPERT} \({FP8_GATE}\.weight in .*\) must be finite"),
    # the message names the scale tensor itself
    "scale-inf": ("FP8", set_value(f"{FP8_DOWN}.weight_scale_inv", (1, 0), float("inf")),
                  rf"^down of expert {LAST_EXPERT} \({FP8_DOWN}\.weight_scale_inv in .*\) contains NaN or infinite "
                  r"values"),
    "int4-scale-nan": ("RAWINT4", set_value(f"{INT4_DOWN}.weight_scale", (7, 2), float("nan")),
                       rf"^down of expert {LAST_EXPERT} \({INT4_DOWN}\.weight_scale in .*\) contains NaN or infinite"),
    "int4-scale-shape": ("RAWINT4", replace(f"{INT4_DOWN}.weight_scale", lambda t: t[:, :-1].contiguous()),
                         rf"^{INT4_DOWN}\.weight_scale in .*: expected shape \[160, 6\], got \[160, 5\]$"),
    "int4-scale-dtype": ("RAWINT4", replace(f"{INT4_DOWN}.weight_scale", lambda t: t.float()),
                         rf"^{INT4_DOWN}\.weight_scale in .*: dtype F32 not supported \(expected one of BF16\)$"),
    "config-block-changed": ("FP8", lambda directory: rewrite_quantization_config(
        directory, fp8_block_quantization_config(64)),
        r"holds block FP8 \(weight_block_size \[64, 64\]\), but this FP8 wrapper was built for the option 128 "),
    "config-other-format": ("FP8", lambda directory: rewrite_quantization_config(directory, kimi_quantization_config()),
                            r"config\.json quantization_config names quant_method 'compressed-tensors' "
                            r"\(format 'pack-quantized'\): method FP8 reads block FP8"),
}


@pytest.mark.parametrize("loaded_before", [False, True], ids=["unloaded", "loaded"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_checkpoint_is_refused_and_changes_nothing(tmp_path, case, loaded_before):
    """A wrapper built on a good checkpoint (FP8 blocks of 128, or RAWINT4 groups of 32), without
    weights or with them loaded from it; then the checkpoint rewritten with other weights and damaged:
    load_weights raises, and the wrapper stays without weights or keeps its weights bit for bit.
    Where the check runs expert by expert, the damage hits the slot loaded last, so that every other
    slot was staged (with weights that differ from the loaded ones) before."""
    method, damage, message = ERROR_CASES[case]
    write = write_fp8_checkpoint if method == "FP8" else write_int4_packed_checkpoint
    layer, layers = layer_weights()
    write(tmp_path, layers)
    wrapper = make_wrapper(SHAPE, method=method, top_k=TOP_K, layer_idx=LAYER, weight_path=str(tmp_path))
    before = None
    if loaded_before:
        wrapper.load_weights(MAP)
        before = forward_all_slots(wrapper, layer)
    write(tmp_path, layer_weights(seed=1)[1])
    if case.startswith("config-"):
        damage(tmp_path)
    else:
        rewrite_tensors(tmp_path, damage)
    with pytest.raises(ValueError, match=message):
        wrapper.load_weights(MAP)
    if loaded_before:
        assert torch.equal(forward_all_slots(wrapper, layer), before)
    else:
        with pytest.raises(RuntimeError, match="^Weights not loaded"):
            forward_all_slots(wrapper, layer)


def test_a_format_the_method_does_not_read_is_refused_at_construction(tmp_path):
    _, layers = layer_weights()
    int4 = write_int4_packed_checkpoint(tmp_path / "int4", layers)
    with pytest.raises(ValueError, match=r"config\.json quantization_config names quant_method 'compressed-tensors' "
                                         r"\(format 'pack-quantized'\): method FP8 reads block FP8"):
        make_wrapper(SHAPE, method="FP8", layer_idx=LAYER, weight_path=str(int4))
    fp8 = write_fp8_checkpoint(tmp_path / "fp8", layers)
    with pytest.raises(ValueError, match=r"config\.json quantization_config names quant_method 'fp8': method RAWINT4 "
                                         "reads compressed-tensors pack-quantized INT4"):
        make_wrapper(SHAPE, method="RAWINT4", layer_idx=LAYER, weight_path=str(fp8))


def test_fp8_nan_code_in_tensors_is_refused():
    """The same check for parts handed to load_weights_from_tensors."""
    layer, _ = layer_weights()
    wrapper = make_wrapper(SHAPE, method="FP8", top_k=TOP_K)
    parts = [list(wrapper.scheme.quantize(w)) for w in (layer.gate, layer.up, layer.down)]
    parts[1][0].view(torch.uint8)[LAST_EXPERT, 2, 9] = 0x7F
    with pytest.raises(ValueError, match=rf"^up weight of expert {LAST_EXPERT} must be finite: its FP8 weight holds "
                                         r"NaN at \[2, 9\]$"):
        wrapper.load_weights_from_tensors(*parts, MAP)
    with pytest.raises(RuntimeError, match="^Weights not loaded"):
        forward_all_slots(wrapper, layer)


# ---- memory -------------------------------------------------------------------------------------------

DSV2_LITE = Shape(num_experts=2, hidden=2048, intermediate=1408)


@pytest.mark.parametrize("method", ["FP8", "RAWINT4"])
def test_resident_bytes_are_the_checkpoints_bytes(tmp_path, method):
    """One expert at DeepSeek-V2-Lite's shape: within 5% of its checkpoint tensors' bytes. Measured
    (resident / checkpoint): FP8 in blocks of 128 8652864 / 8652864 = 1.0 with one subpool and
    8653056 / 8652864 = 1.00002 with two (down's scale column shared by both slices, and alignment);
    RAWINT4 in groups of 32 4866048 / 4866096 = 0.99999 with one or two (the checkpoint's weight_shape
    tensors, 48 bytes, are not kept)."""
    layer = make_layer(DSV2_LITE, seed=4)
    layers = {LAYER: (layer.gate, layer.up, layer.down)}
    if method == "FP8":
        write_fp8_checkpoint(tmp_path, layers, block=128)
    else:
        write_int4_packed_checkpoint(tmp_path, layers, group_size=32)
    on_disk = sum(t.numel() * t.element_size() for name, t in read_checkpoint(tmp_path).items()
                  if ".experts.0." in name)
    for tp in (1, 2):
        wrapper = make_wrapper(DSV2_LITE, method=method, layer_idx=LAYER, weight_path=str(tmp_path), tp=tp)
        wrapper.load_weights(torch.arange(DSV2_LITE.num_experts))
        resident = wrapper.resident_bytes_per_expert()
        print(f"{method} tp={tp}: resident {resident} B per expert, checkpoint {on_disk} B, "
              f"ratio {resident / on_disk:.4f}")
        assert abs(resident / on_disk - 1) <= 0.05


# ---- AMXFP8_SFT ----------------------------------------------------------------------------------------

def test_sft_trains_on_an_fp8_checkpoint(tmp_path):
    """AMXFP8_SFT reads a block-FP8 checkpoint (blocks of 64, two subpools) in place; forward_sft and
    backward match the fp32 reference on the dequantized base (relative L2 <= 1e-2, as in
    test_sft_quantized.py)."""
    shape = sft_helpers.Shape(num_experts=4, hidden=160, intermediate=192, rank=8, alpha=16.0)
    layer = sft_helpers.make_layer(shape, seed=6)
    write_fp8_checkpoint(tmp_path, {LAYER: (layer.gate, layer.up, layer.down)}, block=64)
    wrapper = sft_helpers.make_wrapper(shape, top_k=TOP_K, layer_idx=LAYER, weight_path=str(tmp_path), tp=2,
                                       method="AMXFP8_SFT")
    assert wrapper.format_option == 64 and wrapper.scheme.group_size == 64
    wrapper.load_weights(layer.physical_map)
    wrapper.init_lora_weights(*layer.lora)
    batch = layer.batch(24, TOP_K, seed=6)
    result = sft_helpers.step(wrapper, batch)
    sft_helpers.check_layout(result, batch, layer.lora)
    sft_helpers.assert_close(result, layer.dequantized(wrapper.scheme).reference(batch))


def test_kgroup_sft_keeps_a_pack_quantized_checkpoint_as_it_is(tmp_path):
    """AMXINT4_KGroup_SFT on a Kimi-style pack-quantized checkpoint (groups of 32, two subpools) keeps it
    as it ships (format int4_packed, the checkpoint's integers and bf16 scales) instead of quantizing
    anew; forward_sft and backward match the fp32 reference on the dequantized base (relative L2 <=
    1e-2). A group_size other than the default that names another group size is refused."""
    shape = sft_helpers.Shape(num_experts=4, hidden=160, intermediate=192, rank=8, alpha=16.0)
    layer = sft_helpers.make_layer(shape, seed=7)
    write_int4_packed_checkpoint(tmp_path, {LAYER: (layer.gate, layer.up, layer.down)}, group_size=32)
    wrapper = sft_helpers.make_wrapper(shape, top_k=TOP_K, layer_idx=LAYER, weight_path=str(tmp_path), tp=2,
                                       method="AMXINT4_KGroup_SFT")
    assert (wrapper.engine.weight_format, wrapper.format_option, wrapper.scheme.name) == ("int4_packed", 32,
                                                                                          "int4_packed")
    wrapper.load_weights(layer.physical_map)
    packed = read_checkpoint(tmp_path)[f"{module(int(layer.physical_map[0]), 'gate')}.weight_packed"]
    assert torch.equal(stored(wrapper, 0, "gate")[0], raw(packed[:shape.intermediate // 2]))  # slice 0's rows
    wrapper.init_lora_weights(*layer.lora)
    batch = layer.batch(24, TOP_K, seed=7)
    result = sft_helpers.step(wrapper, batch)
    sft_helpers.check_layout(result, batch, layer.lora)
    sft_helpers.assert_close(result, layer.dequantized(wrapper.scheme).reference(batch))
    with pytest.raises(ValueError, match=r"^group_size is 64, but .* holds pack-quantized INT4 in groups of 32"):
        sft_helpers.make_wrapper(shape, top_k=TOP_K, layer_idx=LAYER, weight_path=str(tmp_path),
                                 method="AMXINT4_KGroup_SFT", group_size=64)


def test_rawint4_needs_whole_groups():
    """compressed-tensors keeps whole groups of G inputs (its quantizer refuses a partial one): RAWINT4
    refuses sizes that are not multiples of G when it is built."""
    with pytest.raises(ValueError, match=r"^pack-quantized INT4 keeps whole groups of 32 inputs: hidden_size \(40\) "
                                         r"must be a multiple of 32$"):
        make_wrapper(Shape(num_experts=4, hidden=40, intermediate=64), method="RAWINT4")
    with pytest.raises(ValueError, match=r"hidden_size \(40\) and moe_intermediate_size \(48\) must be multiples"):
        make_wrapper(Shape(num_experts=4, hidden=40, intermediate=48), method="RAWINT4")
