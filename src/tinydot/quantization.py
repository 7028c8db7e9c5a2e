"""Post-training quantization of tinyDOT's weights (either domain): round-to-nearest (RTN) and GPFQ.

What is quantized. The weight of every nn.Linear and every nn.Embedding (the tensors magnitude
pruning treats as prunable by default; the text study prunes only the trunk, but quantization
covers the word embedding too), one scale per output channel: a Linear weight's row (one output
neuron) or an Embedding's row (one token's vector, the "output" of a lookup). Biases and
LayerNorm parameters stay float32: they are about 2% of the default model's parameters, and the
output of every layer depends on them additively, so a few bytes buy exactness there. A text model
with a tied softmax (`TextDOT`, the default) holds one word matrix for both ends: quantizing its
embedding quantizes the softmax with it, as deploying the model would.

Alphabet. Symmetric, per channel: step s = max|w_row| / K with K = 2^(b-1) - 1, codes -K..K, so
2^b - 1 levels (0 among them) that fit in b bits; the code -2^(b-1) stays unused to keep the grid
symmetric, as in "restricted range" int8. b = 2 is ternary. Both methods use the same alphabet,
so a comparison between them isolates the rounding rule.

RTN.  q = s * clamp(round(w / s), -K, K), every weight on its own.

GPFQ (greedy path-following quantization; Lybrand & Saab 2021; Zhang, Zhou & Saab 2023). Linear
layers are quantized one after another in the order the forward pass uses them. For layer l,
X (m, N) are its inputs in the full-precision network and X~ (m, N) its inputs in the network whose
embeddings and earlier layers are already quantized, at m calibration positions of training
sequences. Each neuron w (a row of W) is quantized coordinate by coordinate, carrying the error:
    u_0 = 0,  q_t = Q(<X~_t, u_{t-1} + w_t X_t> / ||X~_t||^2),  u_t = u_{t-1} + w_t X_t - q_t X~_t
so u_N = X w - X~ q is the neuron's output error on the calibration inputs, which each greedy step
keeps as small as one coordinate can. All neurons of a layer run in parallel (they share X, X~).
Embeddings have no input matrix to track; both methods round them to nearest.

`pack_model` / `unpack_model` turn a quantized model into tensors whose size is the real one:
b-bit codes bit-packed into uint8, float32 scales, float32 biases and norms.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tinydot.checkpoint import PACKED_FORMAT
from tinydot.config import ModelConfig
from tinydot.data.batching import Encoded, EncodedText, length_buckets, model_batch, scored_mask
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.model import Decoder, build_model
from tinydot.pruning.mask import prunable_names

METHODS = ("rtn", "gpfq")
BITS = (2, 3, 4, 5, 6, 7, 8)


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        raise ConfigError(f"bits must be an integer from 2 to 8, got {bits!r}")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")


def max_code(bits: int) -> int:
    """K: codes run over -K..K."""
    return 2 ** (bits - 1) - 1


@dataclass
class QuantizedTensor:
    """A 2-D weight as integer codes times one scale per row."""

    codes: torch.Tensor  # int8 (rows, cols), values in -K..K
    scales: torch.Tensor  # float32 (rows,)
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scales[:, None]


def channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Step per row (rows,) = max|w_row| / K; 1 for an all-zero row (its codes are all 0)."""
    absmax = weight.detach().abs().amax(dim=1).float()
    return torch.where(absmax > 0, absmax / max_code(bits), torch.ones_like(absmax))


def rtn(weight: torch.Tensor, bits: int) -> QuantizedTensor:
    """Round each weight of `weight` (rows, cols) to the nearest level of its row's alphabet."""
    check_bits(bits)
    scales = channel_scales(weight, bits)
    K = max_code(bits)
    codes = torch.clamp(torch.round(weight.detach().float() / scales[:, None]), -K, K)
    return QuantizedTensor(codes.to(torch.int8), scales, bits)


@torch.no_grad()
def gpfq(weight: torch.Tensor, x: torch.Tensor, x_quant: torch.Tensor, bits: int) -> QuantizedTensor:
    """GPFQ of a Linear weight (out, N) given its inputs X (m, N) in the full-precision network and
    X~ (m, N) in the partly quantized one. Same alphabet as `rtn`; deterministic."""
    check_bits(bits)
    K = max_code(bits)
    scales = channel_scales(weight, bits).double()
    w, x, xq = weight.detach().double(), x.double(), x_quant.double()
    codes = torch.zeros(w.shape, dtype=torch.int8)
    norms = xq.pow(2).sum(0)  # (N,)
    error = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)  # u: (m, out), one column per neuron
    for t in range(w.shape[1]):
        target = error + x[:, t, None] * w[None, :, t]  # u_{t-1} + w_t X_t, (m, out)
        # an input that is zero at every calibration position cannot be tracked: round to nearest
        value = (xq[:, t] @ target) / norms[t] if norms[t] > 0 else w[:, t]
        code = torch.clamp(torch.round(value / scales), -K, K)
        codes[:, t] = code.to(torch.int8)
        error = target - xq[:, t, None] * (code * scales)[None, :]
    return QuantizedTensor(codes, scales.float(), bits)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, x: torch.Tensor, x_quant: torch.Tensor) -> float:
    """||X W^T - X~ Q^T||_F / ||X W^T||_F: relative error of a layer's output (bias cancels)."""
    reference = x.double() @ weight.detach().double().T
    return float((reference - x_quant.double() @ quantized.detach().double().T).norm() / reference.norm())


# --------------------------------------------------------------------------- whole models

@dataclass
class QuantizedModel:
    model: Decoder  # the dequantized model (float32 weights on the quantization grid)
    tensors: dict[str, QuantizedTensor]  # parameter name -> codes and scales
    bits: int
    method: str


def _copy(model: Decoder) -> Decoder:
    with torch.device("meta"):  # no random numbers drawn for an initialisation we overwrite
        copy = build_model(model.cfg)
    copy.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, assign=True)
    return copy.eval()


@torch.no_grad()
def layer_inputs(model: Decoder, module_name: str, calibration: Encoded | EncodedText,
                 tokens_per_batch: int = 16384) -> torch.Tensor:
    """The inputs (m, in) that module `module_name` receives at the m real (non-padding) positions
    of the calibration sequences while the model scores them (`model.nll`; strokes: teacher-forced dx)."""
    module = dict(model.named_modules())[module_name]
    rows, calls = [], []

    def capture(mod, args):  # (B, T, in) in the trunk, (B * T, in) in the heads, or the
        calls.append(args[0].reshape(-1, args[0].shape[-1]))  # consecutive chunks of those rows (text softmax)

    handle = module.register_forward_pre_hook(capture)
    try:
        for index in length_buckets(calibration.lengths, tokens_per_batch, np.random.default_rng(0)):
            batch = model_batch(calibration, index, model.cfg)
            calls.clear()
            model.nll(*batch)
            rows.append(torch.cat(calls)[scored_mask(batch).reshape(-1)])
    finally:
        handle.remove()
    return torch.cat(rows)


def quantize_model(model: Decoder, bits: int, method: str = "gpfq",
                   calibration: Encoded | EncodedText | None = None) -> QuantizedModel:
    """Quantize every Linear and Embedding weight of `model` to `bits` bits (see the module docstring).

    calibration : training sequences for GPFQ (ignored by RTN). Pure: `model` is not modified.
    """
    check_bits(bits)
    check_method(method)
    if method == "gpfq" and (calibration is None or len(calibration) == 0):
        raise ConfigError("gpfq needs calibration sequences from the training split")
    quantized = _copy(model)
    params = dict(quantized.named_parameters())
    modules = dict(model.named_modules())
    names = prunable_names(model)  # Linear and Embedding weights, in registration (= forward) order
    embeddings = [n for n in names if isinstance(modules[n.removesuffix(".weight")], nn.Embedding)]
    linears = [n for n in names if n not in embeddings]
    tensors = {}
    with torch.no_grad():
        for name in embeddings + (linears if method == "rtn" else []):
            tensors[name] = rtn(params[name], bits)
            params[name].copy_(tensors[name].dequantize())
        if method == "gpfq":
            for name in linears:  # in forward order: X~ sees every earlier layer quantized
                module_name = name.removesuffix(".weight")
                x = layer_inputs(model, module_name, calibration)
                x_quant = layer_inputs(quantized, module_name, calibration)
                tensors[name] = gpfq(params[name], x, x_quant, bits)
                params[name].copy_(tensors[name].dequantize())
    return QuantizedModel(quantized, tensors, bits, method)


def bits_per_weight(quantized: QuantizedModel) -> float:
    """Stored bits per quantized weight, the float32 scales included."""
    weights = sum(q.codes.numel() for q in quantized.tensors.values())
    scales = sum(q.scales.numel() for q in quantized.tensors.values())
    return (quantized.bits * weights + 32 * scales) / weights


# --------------------------------------------------------------------------- packing

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in -K..K (any shape) -> uint8 (ceil(n * bits / 8),): each code as `bits` bits."""
    offset = codes.reshape(-1).numpy().astype(np.int16) + max_code(bits)  # 0..2K < 2^bits
    planes = ((offset[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (n, bits), low bit first
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_codes`: int8 codes of `shape`."""
    n = math.prod(shape)
    planes = np.unpackbits(packed.numpy())[: n * bits].reshape(n, bits).astype(np.int16)
    values = (planes << np.arange(bits)).sum(1) - max_code(bits)
    return torch.from_numpy(values.astype(np.int8).reshape(shape))


def pack_model(quantized: QuantizedModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the packed form: <name>.codes (uint8) and <name>.scales (float32)
    for each quantized weight, every other parameter as it is (float32)."""
    tensors, shapes = {}, {}
    for name, value in quantized.model.state_dict().items():
        if name in quantized.tensors:
            q = quantized.tensors[name]
            tensors[f"{name}.codes"] = pack_codes(q.codes, q.bits)
            tensors[f"{name}.scales"] = q.scales
            shapes[name] = list(q.codes.shape)
        else:
            tensors[name] = value
    metadata = {"format": PACKED_FORMAT, "model_config": json.dumps(quantized.model.cfg.to_dict()),
                "bits": str(quantized.bits), "method": quantized.method, "shapes": json.dumps(shapes)}
    return tensors, metadata


def unpack_model(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Decoder:
    """The dequantized model from `pack_model`'s tensors and metadata."""
    if metadata.get("format") != PACKED_FORMAT:
        raise ConfigError("not a packed tinydot quantized model (its metadata has no 'tinydot-quantized' format)")
    cfg, bits = ModelConfig.from_dict(json.loads(metadata["model_config"])), int(metadata["bits"])
    state = {name: t for name, t in tensors.items() if not name.endswith((".codes", ".scales"))}
    for name, shape in json.loads(metadata["shapes"]).items():
        codes = unpack_codes(tensors[f"{name}.codes"], bits, tuple(shape))
        state[name] = QuantizedTensor(codes, tensors[f"{name}.scales"], bits).dequantize()
    with torch.device("meta"):
        model = build_model(cfg)
    model.load_state_dict(state, assign=True)
    return model.eval()


# --------------------------------------------------------------------------- for a study

def fewest_bits_within(model: Decoder, eval_data: Encoded | EncodedText, delta: float = 0.02, method: str = "gpfq",
                       calibration: Encoded | EncodedText | None = None, bits=(8, 7, 6, 5, 4, 3, 2)) -> dict:
    """The fewest bits (among `bits`) whose quantized model's NLL on `eval_data` stays within
    `delta` (relative) of the float model's. Returns {"bits", "bits_per_step",
    "dense_bits_per_step"}; bits 32 (no quantization) when none does."""
    dense = evaluate_nll(model, eval_data)["bits_per_step"]
    best = {"bits": 32, "bits_per_step": dense, "dense_bits_per_step": dense, "method": method}
    for b in sorted(bits, reverse=True):
        nll = evaluate_nll(quantize_model(model, b, method, calibration).model, eval_data)["bits_per_step"]
        if nll <= dense * (1 + delta):
            best.update(bits=b, bits_per_step=nll)
    return best
