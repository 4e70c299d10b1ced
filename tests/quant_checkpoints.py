"""Write small quantized Hugging Face checkpoints for the tests, laid out as the models that ship
them are: block FP8 as DeepSeek-V3 / Qwen3-FP8 / MiniMax-M2 and pack-quantized INT4 as Kimi-K2
(written here with kt_moe.quant's quantizers), and checkpoints written by compressed-tensors itself
(INT4 pack-quantized, FP8 per channel, FP8 per block), with the library's own decompression of what
it wrote. Tests import it as `from quant_checkpoints import ...`; the library parts import
compressed_tensors when called, so the rest works without it.

Expert tensor names: `{module}.weight` etc. with the modules of hf_fixtures.expert_tensor_names
(deepseek: model.layers.{L}.mlp.experts.{e}.{gate,up,down}_proj; mixtral:
model.layers.{L}.block_sparse_moe.experts.{e}.{w1,w3,w2}).
"""

import json
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch
from hf_fixtures import expert_tensor_names, save_tensors
from safetensors.torch import load_file

from kt_moe.quant.fp8 import quantize_fp8_block
from kt_moe.quant.int4_packed import quantize_int4_packed

# {layer: (gate [E, I, H], up [E, I, H], down [E, H, I])}, as hf_fixtures.random_layers makes them
Layers = Mapping[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def fp8_block_quantization_config(block: int = 128) -> dict:
    """config.json's quantization_config of a block-FP8 checkpoint (DeepSeek-V3, Qwen3-*-FP8)."""
    return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [block, block]}


def kimi_quantization_config(group_size: int = 32) -> dict:
    """config.json's quantization_config of Kimi-K2-Thinking / Kimi-K2.5: compressed-tensors
    pack-quantized INT4, symmetric groups, routed experts only."""
    weights = {"actorder": None, "block_structure": None, "dynamic": False, "group_size": group_size, "num_bits": 4,
               "observer": "minmax", "observer_kwargs": {}, "strategy": "group", "symmetric": True, "type": "int"}
    return {"config_groups": {"group_0": {"input_activations": None, "output_activations": None,
                                          "targets": ["Linear"], "weights": weights}},
            "format": "pack-quantized",
            "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
                       "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
            "kv_cache_scheme": None, "quant_method": "compressed-tensors", "quantization_status": "compressed"}


def expert_matrices(layers: Layers, scheme: str = "deepseek") -> Iterator[Tuple[str, torch.Tensor]]:
    """(module name, W [N, K]) of every expert matrix of `layers`, in checkpoint order."""
    for layer, stacked in layers.items():
        for e in range(stacked[0].shape[0]):
            for name, w in zip(expert_tensor_names(layer, e, scheme), stacked):
                yield name.removesuffix(".weight"), w[e]


def write_config(directory, layers: Layers, quantization_config: Optional[dict], extra: Optional[dict] = None) -> Path:
    """config.json with the MoE sizes of `layers` (DeepSeek-V3's key names), `quantization_config`
    (left out when None) and the `extra` keys."""
    gate = next(iter(layers.values()))[0]
    config = {"hidden_size": gate.shape[2], "moe_intermediate_size": gate.shape[1], "n_routed_experts": gate.shape[0],
              "num_hidden_layers": max(layers) + 1, "torch_dtype": "bfloat16", **(extra or {})}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def write_fp8_checkpoint(directory, layers: Layers, block: int = 128, scheme: str = "deepseek", shards: int = 1,
                         config: Optional[dict] = None) -> Path:
    """A block-FP8 checkpoint of `layers` (kt_moe.quant.fp8.quantize_fp8_block of each matrix):
    `{module}.weight` float8_e4m3fn and `{module}.weight_scale_inv` fp32 per expert matrix, config.json
    with fp8_block_quantization_config(block) and the `config` keys. Returns the directory."""
    tensors: Dict[str, torch.Tensor] = {}
    for module, w in expert_matrices(layers, scheme):
        tensors[f"{module}.weight"], tensors[f"{module}.weight_scale_inv"] = quantize_fp8_block(w, block)
    write_config(directory, layers, fp8_block_quantization_config(block), config)
    return save_tensors(directory, tensors, shards)


def write_int4_packed_checkpoint(directory, layers: Layers, group_size: int = 32, shards: int = 1,
                                 config: Optional[dict] = None) -> Path:
    """A Kimi-K2 style checkpoint of `layers` (kt_moe.quant.int4_packed.quantize_int4_packed of each
    matrix): `{module}.weight_packed` int32, `.weight_scale` bf16 and `.weight_shape` int64 per expert
    matrix with the deepseek names, config.json with kimi_quantization_config(group_size). Returns
    the directory."""
    tensors: Dict[str, torch.Tensor] = {}
    for module, w in expert_matrices(layers):
        packed, scale, shape = quantize_int4_packed(w, group_size)
        tensors.update({f"{module}.weight_packed": packed, f"{module}.weight_scale": scale,
                        f"{module}.weight_shape": shape})
    write_config(directory, layers, kimi_quantization_config(group_size), config)
    return save_tensors(directory, tensors, shards)


# ---- written by compressed-tensors ----

LIBRARY_FORMATS = ("int4_packed", "fp8_channel", "fp8_block")


def _library_scheme(fmt: str, group_size: int, block: int):
    """The compressed-tensors QuantizationScheme of `fmt`: the library's presets W4A16 (with Kimi's
    group size), FP8_DYNAMIC (GLM-4.x-FP8) and FP8_BLOCK (with a block of `block`)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    fp8 = dict(num_bits=8, type="float", symmetric=True)
    if fmt == "int4_packed":
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
        return QuantizationScheme(targets=["Linear"], weights=weights)
    if fmt == "fp8_channel":
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(strategy="channel", **fp8),
                                  input_activations=QuantizationArgs(strategy="token", dynamic=True, **fp8))
    if fmt == "fp8_block":
        weights = QuantizationArgs(strategy="block", block_structure=[block, block], **fp8)
        return QuantizationScheme(targets=["Linear"], weights=weights,
                                  input_activations=QuantizationArgs(strategy="group", group_size=128, dynamic=True,
                                                                     **fp8))
    raise ValueError(f"fmt must be one of {LIBRARY_FORMATS}, got {fmt!r}")


def _observe(weight: torch.Tensor, args) -> torch.Tensor:
    """The weight scale llm-compressor's min-max observer gives `weight` [N, K] under `args`: the
    per-group / per-row / per-block minima and maxima through compressed-tensors' calculate_qparams."""
    from compressed_tensors.quantization.utils import calculate_qparams, maybe_pad_tensor_for_block_quant

    if args.strategy == "group":
        x, dims = weight.unflatten(-1, (-1, args.group_size)), (-1,)
    elif args.strategy == "channel":
        x, dims = weight[:, None, :], (-1,)
    else:
        b, c = args.block_structure
        padded = maybe_pad_tensor_for_block_quant(weight, (b, c))
        x, dims = padded.unflatten(1, (-1, c)).unflatten(0, (-1, b)), (1, 3)
    scale, _ = calculate_qparams(x.amin(dim=dims), x.amax(dim=dims), args)
    return scale


def write_compressed_tensors_checkpoint(directory, layers: Layers, fmt: str, group_size: int = 32, block: int = 128,
                                        shards: int = 1) -> Path:
    """`layers`, rounded to bf16, quantized and saved by compressed-tensors as llm-compressor does
    for a bf16 model: expert modules as bf16 nn.Linear with the deepseek names,
    apply_quantization_config, each weight scale from the min-max observation (_observe),
    ModelCompressor.compress_model, the compressed state dict saved as save_pretrained lays it out,
    and ModelCompressor.update_config writing config.json's quantization_config. fmt: "int4_packed"
    (pack-quantized, groups of `group_size`), "fp8_channel" (float-quantized, per channel) or
    "fp8_block" (float-quantized, blocks of block x block). Returns the directory."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    scheme = _library_scheme(fmt, group_size, block)
    root = torch.nn.Module()
    for name, w in expert_matrices(layers):
        *path, leaf = name.split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
        linear.weight.data.copy_(w)
        parent.add_module(leaf, linear)
    apply_quantization_config(root, QuantizationConfig(config_groups={"group_0": scheme}))
    for module in root.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight_scale.data.copy_(_observe(module.weight.data, module.quantization_scheme.weights))
    compressor = ModelCompressor.from_pretrained_model(root)
    compressor.compress_model(root)
    tensors = {name: t.contiguous() for name, t in root.state_dict().items()}
    write_config(directory, layers, None)
    compressor.update_config(str(directory))
    return save_tensors(directory, tensors, shards)


def read_checkpoint(directory) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `directory` (one file or shards), by name."""
    tensors: Dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def library_decompressed(directory) -> Dict[str, torch.Tensor]:
    """{module name: weight} as compressed-tensors decompresses the checkpoint in `directory` (its
    config.json's scheme and format, the format's compressor applied to each module's tensors), in the
    dtype the library returns (the scale's)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig.model_validate(json.loads((Path(directory) / "config.json").read_text())
                                               ["quantization_config"])
    (scheme,) = config.config_groups.values()
    compressor = BaseCompressor.get_value_from_registry(config.format)
    modules: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, tensor in read_checkpoint(directory).items():
        module, local = name.rsplit(".", 1)
        modules.setdefault(module, {})[local] = tensor
    return {module: compressor.decompress(state, scheme)["weight"] for module, state in modules.items()}
