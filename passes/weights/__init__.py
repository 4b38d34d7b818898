"""The `weights` pass: the 2-D matrices behind every weight-bearing node, with their names.

The pass walks every node and applies its op's rule; then every parameter no rule accounted for is
analysed or skipped with its reason. Its rooms:

- `ops`: one extraction rule per op (`EXTRACTORS`): Gemm / MatMul, Conv / ConvTranspose per kernel
  position, embeddings, LSTM / GRU / RNN gates, MatMulNBits and the quantized operators, dequantized;
- `context`: the state a run shares (`Context`): which parameters a weight is computed from, one layer
  per parameter however many nodes use it, and each layer's name (its module path on a PyTorch graph);
- `stacked`: parameters of rank >= 3 that hold several matrices (mixture-of-experts tensors, weights an
  Einsum contracts), and the per-layer summary across experts (`expert_summary`);
- `accounting`: the invariant: every learnable parameter that must appear (`must_appear`) yields a
  layer or a `skipped` entry with its reason, never silence; parameters the forward pass never reads
  are analysed by their framework's layout.

With `split_gate_up`, a fused gate/up projection (`gate_up_proj`: Phi-3's [2I, H], the experts'
[E, 2I, H], gpt-oss's interleaved [E, H, 2I]) is two matrices, gate and up, one row each
(`split_fused`, the rule the weights-only route applies too); a fused q/k/v stays one matrix, its
`fused` column saying so, unless `split_qkv` cuts it in thirds.
"""

from __future__ import annotations

from dataclasses import dataclass

from irtools.ir.fused import (CHECKPOINT_NAMES_KEY, RECURRENT_GATES_KEY, checkpoint_renamed, recurrent_gates,
                              split_fused, split_gates)
from irtools.ir.layers import WeightLayer
from irtools.ir.model import IRModel
from irtools.passes.weights.accounting import account_for_every_parameter, is_split_bias, must_appear
from irtools.passes.weights.context import DERIVED_NAMES, VIEW_OPS, Context, module_path
from irtools.passes.weights.ops import EXTRACTORS, QUANTIZED_WEIGHTS
from irtools.passes.weights.stacked import expert_summary
from irtools.passing import Pass, register_pass

__all__ = ["DERIVED_NAMES", "EXTRACTORS", "QUANTIZED_WEIGHTS", "VIEW_OPS", "Weights", "WeightsPass", "expert_summary",
           "is_split_bias", "module_path", "must_appear"]


@dataclass(slots=True)
class Weights:
    """Result of the `weights` pass."""

    layers: list[WeightLayer]
    skipped: list[dict]  # {"name", "node", "op_type", "parameter", "reason"}


@register_pass
class WeightsPass(Pass):
    """The 2-D weight matrices of every Gemm/MatMul/Conv/embedding/recurrent node."""

    name = "weights"
    conv_slices: bool = False  # one layer per kernel position instead of one pooled ESD
    split_qkv: bool = False  # split fused (in, 3*in) projections into q, k, v
    #: fused gate/up projections as their gate and up matrices (`split_fused`), as every route splits them
    split_gate_up: bool = True

    def run(self, model: IRModel) -> Weights:
        ctx = Context(model, self)
        # the nodes that apply weights to activations first, then those that compute constants alone (an unrolled
        # RNN's first step on its zero state, zeros @ W): a layer is named after a node that applies it, and the
        # rows keep the order of each weight's first use
        constant = model.constants_analysis.node_is_constant
        nodes = model.all_nodes
        for node in [n for n in nodes if not constant(n)] + [n for n in nodes if constant(n)]:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            rule = EXTRACTORS.get(key)
            if rule is not None:
                rule(ctx, node)
        position = {model.node_names[n]: k for k, n in enumerate(nodes)}
        ctx.layers.sort(key=lambda layer: min(position.get(u, len(nodes)) for u in (layer.node, *layer.shared_with)))
        account_for_every_parameter(ctx)
        # recurrent weights a route computes as one matrix (Keras' LSTM / GRU kernels) as their gates, as ONNX's ops
        shapes = {p.name: tuple(p.shape) for p in model.parameters}
        layers = split_gates(ctx.layers, recurrent_gates(model.model.metadata_props.get(RECURRENT_GATES_KEY)),
                             ctx.out_axes, shapes)
        if not self.split_gate_up:
            return Weights(layers, ctx.skipped)
        # fused gate/up projections as their two matrices, as the weights-only and module routes split them
        layers = split_fused(layers, shapes, None, ctx.out_axes)
        # rows of parameters the checkpoint stores under other names (a folder's Mixtral experts): its names
        return Weights(checkpoint_renamed(layers, model.model.metadata_props.get(CHECKPOINT_NAMES_KEY)), ctx.skipped)
