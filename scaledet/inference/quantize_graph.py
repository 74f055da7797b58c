"""The ONNX graph side of INT8 (:mod:`scaledet.inference.quantize`): which nodes are the network, which
of them each float rule keeps float, and the exact rewrites made before and after onnxruntime's quantizer.

Every function takes an ``onnx.GraphProto`` (``graph``) and reads or rewrites it in place; none changes
what the graph computes (the rewrites are exact: a spatial mean as the equal global pool, a constant
weight folded into a dequantize scale).
"""

from __future__ import annotations

import numpy

#: ops that merge feature maps (with :func:`float_rules`' "merges": also ``Mul`` by a constant weight)
MERGE_OP_TYPES = ("Add", "Sum", "Concat", "ReduceSum")


def network_nodes(graph) -> set[str]:
    """Names of the nodes of ``graph`` (an ``onnx.GraphProto``) that are convolutions or feed one: the
    network. The rest (decoding, top-k, NMS) is post-processing."""
    producer = {output: node for node in graph.node for output in node.output}
    found: set[str] = set()
    stack = [node for node in graph.node if node.op_type == "Conv"]
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        stack += [producer[name] for name in node.input if name in producer]
    return found


def _conv_neighbours(graph, network: set[str]) -> tuple[set[str], set[str]]:
    """``(first convs, last convs)``: convolutions with no convolution upstream / downstream."""
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_conv(start, step) -> bool:
        seen, stack = set(), list(step(start))
        while stack:
            node = stack.pop()
            if node.name in seen or node.name not in network:
                continue
            if node.op_type == "Conv":
                return True
            seen.add(node.name)
            stack += step(node)
        return False

    upstream = lambda node: [producer[n] for n in node.input if n in producer]  # noqa: E731
    downstream = lambda node: [c for n in node.output for c in consumers.get(n, [])]  # noqa: E731
    convs = [node for node in graph.node if node.op_type == "Conv"]
    return ({c.name for c in convs if not reaches_conv(c, upstream)},
            {c.name for c in convs if not reaches_conv(c, downstream)})


def spatial_means_as_global_pools(graph) -> int:
    """Rewrite, in place, each ``ReduceMean`` of ``graph`` (an ``onnx.GraphProto``) that averages a 4-d
    tensor over its two spatial axes and keeps them (squeeze-excitation's ``x.mean((2, 3), keepdim=True)``)
    as the equal ``GlobalAveragePool``. onnxruntime runs the latter in int8 and the former only in float,
    between a dequantize and a quantize, on NHWC data: on D0 512 (batch 1, 1 thread, AMD EPYC) the 16
    means took 16 ms of a 98 ms INT8 graph, the pools take 0.9 ms. Needs the shapes inferred
    (``quant_pre_process``); means of unknown rank are left alone. Returns the number rewritten."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: node.attribute[0].t for node in graph.node
                 if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"}
    ranks = {info.name: len(info.type.tensor_type.shape.dim) for info in [*graph.value_info, *graph.input]
             if info.type.tensor_type.HasField("shape")}
    rewritten, axes_inputs = 0, set()
    for node in graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 1:  # opset >= 18: axes are an input
            tensor = initializers.get(node.input[1], constants.get(node.input[1]))
            axes = None if tensor is None else numpy_helper.to_array(tensor)
        else:
            axes = attributes.get("axes")
        if axes is None or attributes.get("keepdims", 1) != 1:
            continue
        if sorted(int(a) % 4 for a in numpy.atleast_1d(axes)) == [2, 3]:
            axes_inputs.update(node.input[1:])
            node.CopyFrom(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
            rewritten += 1
    if rewritten:  # drop the axes initializers no node reads any more
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name not in axes_inputs or init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten


def _constants(graph) -> set[str]:
    """Names of initializers and ``Constant`` outputs."""
    return {init.name for init in graph.initializer} | {
        output for node in graph.node if node.op_type == "Constant" for output in node.output}


def _merge_nodes(graph, network: set[str]) -> set[str]:
    """Network nodes that merge feature maps: :data:`MERGE_OP_TYPES`, and ``Mul`` by a constant (the
    weights of a weighted fusion, e.g. BiFPN's)."""
    constants = _constants(graph)
    return {node.name for node in graph.node if node.name in network and (
        node.op_type in MERGE_OP_TYPES or (node.op_type == "Mul" and any(i in constants for i in node.input)))}


def _gate_nodes(graph, network: set[str]) -> set[str]:
    """Network nodes that gate activations: ``Sigmoid`` and ``Mul`` of two activations (SiLU / swish
    ``x * sigmoid(x)``, squeeze-excitation ``x * sigmoid(se)``)."""
    constants = _constants(graph)
    return {node.name for node in graph.node if node.name in network and (
        node.op_type == "Sigmoid" or (node.op_type == "Mul" and not any(i in constants for i in node.input)))}


#: candidate float-kept parts, most quantized first: (name, parts) with parts from ``first-conv`` (the
#: stem: convs with no conv upstream), ``last-convs`` (the predictors: no conv downstream), ``merges``
#: (:func:`_merge_nodes`), ``gates`` (:func:`_gate_nodes`) and ``non-conv`` (every network node but
#: the convolutions: only convolutions run in int8)
FLOAT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("none", ()),
    ("first-conv+last-convs", ("first-conv", "last-convs")),
    ("gates", ("gates",)),
    ("gates+merges", ("gates", "merges")),
    ("non-conv", ("non-conv",)),
    ("non-conv+first-conv+last-convs", ("non-conv", "first-conv", "last-convs")),
)


def float_rules(graph) -> list[tuple[str, set[str]]]:
    """:data:`FLOAT_RULES` resolved on ``graph``: ``[(rule name, names of network nodes kept float)]``."""
    network = network_nodes(graph)
    first, last = _conv_neighbours(graph, network)
    convs = {node.name for node in graph.node if node.op_type == "Conv"}
    parts = {"first-conv": first, "last-convs": last, "merges": _merge_nodes(graph, network),
             "gates": _gate_nodes(graph, network), "non-conv": network - convs}
    return [(name, set().union(*(parts[p] for p in chosen))) for name, chosen in FLOAT_RULES]


def constant_scales_folded(graph) -> int:
    """Fold each quantized ``Mul`` by a positive scalar constant into its input's scale, in place; return
    how many.

    ``DQ(x_q; s, z) * w`` is exactly ``DQ(x_q; s*w, z)``: for BiFPN's weighted fusions (``w0 * x0 + w1 *
    x1 ...`` with constant weights) the weights then cost nothing, where onnxruntime would run each as an
    integer ``Mul`` that requantizes its input (52 of them in D0). The pattern, in the QDQ graph:
    ``DQ(x_q; s, z)`` and ``DQ(w_q)`` -> ``Mul`` -> ``Q`` -> ``DQ`` -> consumers; it becomes ``DQ(x_q; s*w,
    z)`` -> consumers (one requantization fewer, so also slightly more accurate). Only scalar weights > 0."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in graph.output}

    def dequantized(name):  # the DequantizeLinear producing ``name`` with a scalar scale, else None
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            return None
        return node if numpy_helper.to_array(inits[node.input[1]]).size == 1 else None

    def constant_value(dq):  # the float value of a DequantizeLinear of a scalar initializer, else None
        if dq.input[0] not in inits or any(i not in inits for i in dq.input[1:]):
            return None
        values = [numpy_helper.to_array(inits[i]).astype(numpy.float64) for i in dq.input]
        if values[0].size != 1:
            return None
        zero = values[2] if len(values) > 2 else 0.0
        return float(((values[0] - zero) * values[1]).ravel()[0])

    replaced, folded = {}, 0  # a node's outputs -> its replacement (None: removed); outputs are unique
    for mul in list(graph.node):
        if mul.op_type != "Mul" or len(consumers.get(mul.output[0], [])) != 1:
            continue
        inputs = [dequantized(name) for name in mul.input]
        if None in inputs:
            continue
        weights = [constant_value(dq) for dq in inputs]
        if sum(w is not None for w in weights) != 1:
            continue
        side = 0 if weights[0] is None else 1  # the activation's DequantizeLinear
        activation, weight = inputs[side], weights[1 - side]
        quantize = consumers[mul.output[0]][0]
        if not weight > 0 or quantize.op_type != "QuantizeLinear" or quantize.output[0] in graph_outputs:
            continue
        requantized = consumers.get(quantize.output[0], [])
        if not requantized or any(node.op_type != "DequantizeLinear" for node in requantized):
            continue
        scale = numpy_helper.to_array(inits[activation.input[1]])
        scale_name = f"{mul.output[0]}_folded_scale"
        graph.initializer.append(numpy_helper.from_array((scale * weight).astype(scale.dtype), scale_name))
        for dq in requantized:  # each DequantizeLinear of the product reads the activation, rescaled
            replaced[tuple(dq.output)] = helper.make_node(
                "DequantizeLinear", [activation.input[0], scale_name, *activation.input[2:]], list(dq.output),
                name=f"{dq.name}_folded")
        replaced.update({tuple(mul.output): None, tuple(quantize.output): None})
        folded += 1
    if folded:  # in place (the new nodes read x_q, made before the Mul: the order stays topological)
        nodes = [replaced.get(tuple(node.output), node) for node in graph.node]
        del graph.node[:]
        graph.node.extend(node for node in nodes if node is not None)
        _drop_unused(graph)
    return folded


def _drop_unused(graph) -> None:
    """Remove the ``DequantizeLinear`` nodes whose outputs nothing reads, then the initializers only they read."""
    freed = set()
    while True:
        read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
        dead = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.output[0] not in read]
        if not dead:
            break
        for node in dead:
            freed.update(node.input)
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name in freed - read]:
        graph.initializer.remove(init)


def check_scales(graph) -> None:
    """Every quantization scale in ``graph`` is finite and positive (else the calibration images gave
    an empty or infinite range somewhere)."""
    from onnx import numpy_helper

    scales = {node.input[1] for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")}
    for init in graph.initializer:
        if init.name in scales:
            values = numpy_helper.to_array(init)
            if not (numpy.isfinite(values).all() and (values > 0).all()):
                raise ValueError(f"int8: quantization scale {init.name!r} is {values.ravel()[:4]}: the calibration "
                                 "images give an empty or infinite range there; use more varied images")
