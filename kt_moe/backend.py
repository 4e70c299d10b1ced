"""What every wrapper shares: the validated config, its frozen native twin, the worker pool and
the guards that turn a call of the other mode's methods into the spec's RuntimeError."""

from __future__ import annotations

from kt_moe import _native
from kt_moe.config import KTMoEConfig
from kt_moe.pool import shared_pool
from kt_moe.weights.checkpoint_formats import CHECKPOINT_METHODS, check_layer_shape, checkpoint_base_format, format_option

INFERENCE_ONLY_METHODS = ("forward", "submit_forward", "sync_forward", "select_deferred_experts")
SFT_ONLY_METHODS = ("forward_sft", "backward", "init_lora_weights", "update_lora_weights")


def _unavailable(name: str, mode: str):
    def method(self, *args, **kwargs):
        raise RuntimeError(f"{name}() not available in {mode} mode")

    method.__name__ = name
    method.__doc__ = f"Not available in {mode} mode: raises RuntimeError."
    return method


class MoEWrapperBase:
    """Base of every backend; subclasses set `mode` ("inference" or "sft")."""

    mode: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "mode" in cls.__dict__:
            others = SFT_ONLY_METHODS if cls.mode == "inference" else INFERENCE_ONLY_METHODS
            for name in others:
                setattr(cls, name, _unavailable(name, cls.mode))

    def __init__(self, config: KTMoEConfig):
        if config.mode != self.mode:
            raise ValueError(f"{type(self).__name__} runs mode='{self.mode}', the config has mode='{config.mode}'")
        self.config = config
        # The base format a checkpoint decides (AMXINT4_KGroup_SFT on pack-quantized INT4), and FP8's
        # scale block side / the INT4 group size from the checkpoint in weight_path (None for the
        # methods whose format takes none)
        self.base_format = checkpoint_base_format(config.weight_path, config.method)
        if self.base_format is not None:
            self.format_option = self.base_format.option
            if config.group_size not in (type(config).model_fields["group_size"].default, self.format_option):
                raise ValueError(f"group_size is {config.group_size}, but {config.weight_path} holds "
                                 f"{self.base_format.description}: leave group_size at its default")
        else:
            self.format_option = format_option(config.weight_path, config.method)
        check_layer_shape(self.base_format.format if self.base_format else CHECKPOINT_METHODS.get(config.method),
                          self.format_option, config.hidden_size, config.moe_intermediate_size)
        self.native_config = config.to_native(self.format_option, self.base_format and self.base_format.format,
                                              self.matrix_formats())
        _native.active_isa()  # raises ValueError here when KT_MOE_ISA asks for too much
        self.pool = shared_pool(config.cpuinfer_threads, config.threadpool_count)

    def matrix_formats(self) -> tuple:
        """The registered format of gate, up and down when the method takes one per matrix
        (LLAMAFILE), else ()."""
        return ()

    @property
    def isa(self) -> str:
        """The ISA level the kernels run at now: read at each call, since kt_moe.set_isa() switches
        every wrapper's kernels at once."""
        return _native.active_isa()

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}(method={c.method!r}, layer_idx={c.layer_idx}, experts={c.num_experts}, "
                f"top_k={c.num_experts_per_tok}, hidden={c.hidden_size}, intermediate={c.moe_intermediate_size}, "
                f"threads={c.cpuinfer_threads}/{c.threadpool_count}, isa={self.isa!r})")
