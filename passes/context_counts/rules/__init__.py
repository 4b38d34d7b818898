"""The counting rules, one module per op family; importing this package registers them all.

elementwise, normalization, linear, window, movement, gather_scatter, reduce, resample, sequence,
attention, recurrent, control_flow, signal, quantized, com_microsoft. A family imports only the
package core (`context`, `registry`, `arrays`, `counts`, `liveness`), never another family: an op
counted as another registers as that op by name (`register_as`).
"""

from irtools.passes.context_counts.rules import (  # noqa: F401
    attention,
    com_microsoft,
    control_flow,
    elementwise,
    gather_scatter,
    linear,
    movement,
    normalization,
    quantized,
    recurrent,
    reduce,
    resample,
    sequence,
    signal,
    window,
)
