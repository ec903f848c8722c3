"""TF1 checkpoints with their `.meta` graph, cut down to one input and one output tensor.

The graph is imported, its variables restored in a v1 Session and folded into constants, and
the frozen graph is wrapped as a function from the input tensor to the output tensor. Freezing
drops everything training needed (savers, optimizers, queues) that TF2 could not run anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.checkpoint_types import Kind, LoadedModel, LoadOptions
from export.errors import BadTensorName, UnreadableCheckpoint, UsageError, tf_errors

# How many candidate names an error message lists.
_SUGGESTIONS = 8


def load_tf1_checkpoint(prefix: Path, options: LoadOptions) -> LoadedModel:
    """A function input -> output over the frozen graph of checkpoint `prefix`."""
    if not options.input_tensor or not options.output_tensor:
        raise UsageError("a TF1 checkpoint needs --input-tensor and --output-tensor names")
    input_name = _tensor_name(options.input_tensor)
    output_name = _tensor_name(options.output_tensor)
    frozen, input_shape = _freeze(prefix, input_name, output_name)
    function = _wrap(frozen, input_name, output_name)
    return LoadedModel(
        classifier=function, kind=Kind.TF1, path=prefix, input_size=_input_size(input_shape)
    )


def _tensor_name(name: str) -> str:
    """Accept an op name ("input") as the usual shorthand for its first output ("input:0")."""
    return name if ":" in name else f"{name}:0"


def _freeze(prefix: Path, input_name: str, output_name: str) -> tuple[Any, list[int | None]]:
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        with tf_errors(UnreadableCheckpoint, f"{prefix}: cannot restore the TF1 checkpoint"):
            saver = v1.train.import_meta_graph(f"{prefix}.meta", clear_devices=True)
            if saver is not None:  # a graph without variables has no saver and needs no restore
                saver.restore(session, str(prefix))
        inputs = _lookup(graph, input_name, "input")
        outputs = _lookup(graph, output_name, "output")
        _check_input(inputs, input_name)
        frozen = v1.graph_util.convert_variables_to_constants(
            session, graph.as_graph_def(), [outputs.op.name]
        )
        return frozen, inputs.shape.as_list() if inputs.shape.rank is not None else []


def _lookup(graph: Any, name: str, role: str) -> Any:
    try:
        return graph.get_tensor_by_name(name)
    except (KeyError, ValueError) as exc:
        raise BadTensorName(
            f"the graph has no {role} tensor {name!r}; placeholders: "
            f"{', '.join(_placeholders(graph)) or 'none'}"
        ) from exc


def _placeholders(graph: Any) -> list[str]:
    names = [f"{op.name}:0" for op in graph.get_operations() if op.type == "Placeholder"]
    return names[:_SUGGESTIONS]


def _check_input(tensor: Any, name: str) -> None:
    import tensorflow as tf

    shape = tensor.shape
    if tensor.dtype != tf.float32 or (shape.rank is not None and shape.rank != 4):
        raise BadTensorName(
            f"input tensor {name!r} is {tensor.dtype.name} {shape}; "
            "it must be a float32 image batch [N, H, W, 3]"
        )


def _wrap(frozen: Any, input_name: str, output_name: str) -> Any:
    import tensorflow as tf

    def import_frozen() -> None:
        tf.compat.v1.import_graph_def(frozen, name="")

    wrapped = tf.compat.v1.wrap_function(import_frozen, [])
    graph = wrapped.graph
    return wrapped.prune(
        feeds=[graph.get_tensor_by_name(input_name)], fetches=graph.get_tensor_by_name(output_name)
    )


def _input_size(shape: list[int | None]) -> tuple[int, int] | None:
    if len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[1]), int(shape[2])
    return None
