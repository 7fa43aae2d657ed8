"""How the Stable Diffusion prior uses the hardware: precision, attention kernel, memory format,
torch.compile and CUDA graphs.

Every lever is "auto" by default, which means on when the prior runs on CUDA and off on CPU, and each
can be turned off alone (`--set prior.compile=off`, ...). `resolve` turns the settings into concrete
choices for one device (an `Accel`), refusing combinations that cannot work with a message naming the
field. `compiled` wraps torch.compile so that a compiler failure costs a warning and eager speed, never
the user's session.

CUDA graphs are captured by torch.compile's "reduce-overhead" mode: one graph per input shape (the
UNet sees B latents for ISM's inversion and SSD's baseline, 2B for the CFG call), replayed with static
buffers. A replay overwrites the previous replay's output, so callers copy what they keep, and
`step_begin()` tells the graph tree where a training step starts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import PriorError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
SWITCH = ("auto", "on", "off")
SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Accel:
    """The concrete choices for one device. unet_dtype also applies to the text encoder, vae_dtype to
    the VAE and the depth network (the networks that see images)."""

    unet_dtype: torch.dtype
    vae_dtype: torch.dtype
    sdpa: bool
    channels_last: bool
    compile: bool
    cuda_graphs: bool

    def describe(self) -> str:
        parts = [f"unet {SHORT[self.unet_dtype]}", f"vae {SHORT[self.vae_dtype]}",
                 "sdpa" if self.sdpa else "classic attention"]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("compile + CUDA graphs" if self.cuda_graphs else "compile")
        return ", ".join(parts)


DTYPE_FIELDS = ("dtype", "vae_dtype")
SWITCH_FIELDS = ("channels_last", "compile", "cuda_graphs")


def check_choices(settings: Any) -> None:
    """Each precision field names a dtype choice and each switch is auto / on / off (or a bool)."""
    for name in DTYPE_FIELDS:
        if getattr(settings, name) not in DTYPE_CHOICES:
            raise PriorError(f"sd.{name}: choose one of {', '.join(DTYPE_CHOICES)}; got {getattr(settings, name)!r}")
    for name in SWITCH_FIELDS:
        value = getattr(settings, name)
        if not isinstance(value, bool) and value not in SWITCH:
            raise PriorError(f"sd.{name}: choose one of {', '.join(SWITCH)}; got {value!r}")


def resolve_dtype(name: str, device: torch.device, field: str, auto_cuda: torch.dtype) -> torch.dtype:
    """The dtype a (checked) `field` setting names; "auto" is `auto_cuda` on CUDA, fp32 on CPU."""
    if name == "auto":
        return auto_cuda if device.type == "cuda" else torch.float32
    if device.type == "cpu" and name == "float16":
        raise PriorError(f"{field}: float16 is not supported on CPU; use float32 or bfloat16 (or auto)")
    return DTYPES[name]


def switch(value: Any, cuda: bool) -> bool:
    """A (checked) auto / on / off setting, or a bool, as a bool: auto follows `cuda`."""
    if isinstance(value, bool):
        return value
    return cuda if value == "auto" else value == "on"


def resolve(settings: Any, device: torch.device) -> Accel:
    """Concrete choices from StableDiffusionSettings-like `settings` (fields dtype, vae_dtype, sdpa,
    channels_last, compile, cuda_graphs) for `device`. Raises PriorError naming the field."""
    check_choices(settings)
    cuda = device.type == "cuda"
    # bf16 where the GPU has it: fp32's exponent range, so the VAE cannot overflow as it can in fp16
    bf16 = cuda and torch.cuda.is_bf16_supported()
    unet = resolve_dtype(settings.dtype, device, "sd.dtype", torch.bfloat16 if bf16 else torch.float16)
    vae = resolve_dtype(settings.vae_dtype, device, "sd.vae_dtype", torch.bfloat16 if bf16 else torch.float32)
    do_compile = switch(settings.compile, cuda)
    graphs = switch(settings.cuda_graphs, cuda and do_compile)
    if graphs and not cuda:
        raise PriorError("sd.cuda_graphs: CUDA graphs need a CUDA device; set it to off or auto")
    if graphs and not do_compile:
        raise PriorError("sd.cuda_graphs: the graphs are captured by torch.compile (mode reduce-overhead); "
                         "set sd.compile to on or auto, or sd.cuda_graphs to off")
    return Accel(unet_dtype=unet, vae_dtype=vae, sdpa=bool(settings.sdpa),
                 channels_last=switch(settings.channels_last, cuda), compile=do_compile, cuda_graphs=graphs)


COMPILER_PACKAGES = ("torch._dynamo", "torch._inductor", "torch._functorch")


def is_compiler_error(exc: BaseException) -> bool:
    """Errors of TorchDynamo, AOTAutograd or Inductor (compiling, or replaying CUDA graphs), as opposed
    to errors of the model: by the exception's type, or by the frame that raised it (cudagraph trees
    raise plain RuntimeErrors)."""
    if type(exc).__module__.startswith(COMPILER_PACKAGES):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return any(f"/{pkg.replace('.', '/')}/" in path for pkg in COMPILER_PACKAGES)


class Compiled:
    """A module run through torch.compile, falling back to the eager module for good on the first
    compiler error (with a warning that says how to skip compiling). Errors of the model itself (shape
    mismatches, out of memory) are raised as they are.

    Args:
        module: the eager module
        cuda_graphs: compile in "reduce-overhead" mode (CUDA graphs) instead of the default mode
        what: the module's name for the warning
        backend: torch.compile backend (tests use a failing one)
    """

    def __init__(self, module: torch.nn.Module, cuda_graphs: bool, what: str, backend: str | Callable = "inductor"):
        self.eager = module
        mode = "reduce-overhead" if cuda_graphs else None
        # dynamic=False: one specialised graph per shape; the UNet sees two batch sizes (B and 2B)
        self.compiled = torch.compile(module, mode=mode, dynamic=False, backend=backend)
        self.what = what
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # only compiler errors are absorbed; see is_compiler_error
                if not is_compiler_error(exc):
                    raise
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                self.failed = f"{type(exc).__name__}: {' '.join(lines[:2])}"  # dynamo puts the cause on line 2
                warnings.warn(f"{self.what}: torch.compile failed ({self.failed}); running it eagerly from now on. "
                              "Set prior.compile=off to skip compiling.", RuntimeWarning, stacklevel=2)
        return self.eager(*args, **kwargs)


def step_begin(accel: Accel) -> None:
    """Mark the start of a training step for CUDA graph trees (outputs of the last step may be reused)."""
    if accel.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
