"""The reference ports as benchmark engines, with the same weights as ours (development only).

* EfficientDet: effdet 0.4.1's ``DetBenchPredict`` (eager fp32). Its randomly initialised network
  gets :func:`spread_random_weights` (non-degenerate scores), its state dict is saved as an effdet
  ``.pth`` and ours is loaded from that file (:func:`scaledet.load`, converted). It receives our
  already normalised, resized and padded batch, so its time excludes the pre-processing ours
  includes.
* DETR: transformers' ``DetrForObjectDetection`` + ``post_process_object_detection`` on our
  normalised padded batch and mask; ours is loaded from its saved state dict (Hugging Face names).
* RT-DETR: transformers' ``RTDetrForObjectDetection`` (:func:`rtdetr_hf_config` of our variant
  row, 80 classes, its own random init) + ``RTDetrImageProcessor.post_process_object_detection``
  on our resized batch; ours is loaded from its saved state dict.

:func:`reference_engine` is the :data:`scaledet.inference.benchmark.ReferenceFactory` that
``python -m benchmarks.bench_reference`` gives ``scaledet bench``; ``tests/test_optimize.py``
uses :func:`spread_random_weights`. effdet and transformers are dev extras
(``pip install -e ".[dev]"``), never imported by the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import scaledet
from scaledet.inference.benchmark import Engine
from scaledet.models.registry import family_of

#: our DETR names -> (timm backbone, dilation) of the transformers config with the same layout
DETR_BACKBONES = {"detr_r50": ("resnet50", False), "detr_r101": ("resnet101", False),
                  "detr_r50_dc5": ("resnet50", True), "detr_r101_dc5": ("resnet101", True)}


@torch.no_grad()
def spread_random_weights(network: nn.Module, class_conv: nn.Conv2d, box_conv: nn.Conv2d,
                          image_size: tuple[int, int], seed: int = 1) -> None:
    """Make a randomly initialised EfficientDet network's detections non-degenerate, in place.

    The default init gives every anchor nearly the same class logit (many exact score ties make
    "same detections" ill-defined). This perturbs BatchNorm statistics and affine terms a little
    and rescales the two predictor convs so that, on a random image, class logits have median -3
    and 99.9th percentile +2, and box codes median 0 and 99.9th percentile 0.5.
    ``network(x [1,3,H,W])`` must return (class outputs, box outputs) per level (ours or effdet's).
    """
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.1 - 0.05)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.2 + 0.9)
            module.weight.copy_(torch.rand(n, generator=generator) * 0.2 + 0.9)
            module.bias.copy_(torch.rand(n, generator=generator) * 0.1 - 0.05)
    network.eval()
    cls_out, box_out = network(torch.rand(1, 3, *image_size, generator=generator))
    for conv, outputs, low, high in ((class_conv, cls_out, -3.0, 2.0), (box_conv, box_out, 0.0, 0.5)):
        values = torch.cat([o.flatten() for o in outputs])
        q50, q999 = torch.quantile(values[:: max(1, values.numel() // 100_000)], torch.tensor([0.5, 0.999]))
        scale = (high - low) / (q999 - q50)
        conv.weight.mul_(scale)
        conv.bias.mul_(scale).add_(low - q50 * scale)


def effdet_reference(name: str, device: str, tmp: Path) -> tuple[Engine, nn.Module]:
    """(effdet ``DetBenchPredict`` engine, our model loaded from its weights)."""
    import effdet

    bench = effdet.create_model("tf_" + name, bench_task="predict", pretrained=False, pretrained_backbone=False)
    net = bench.model
    spread_random_weights(net, net.class_net.predict.conv_pw, net.box_net.predict.conv_pw, bench.config.image_size)
    path = tmp / f"{name}_effdet.pth"
    torch.save(net.state_dict(), path)
    model = scaledet.load(path, model=name, device=device)
    bench = bench.eval().to(device)

    def prepare(images):
        return model.preprocess(images).inputs[0].to(device)

    engine = Engine("effdet", lambda batch: bench(batch), prepare, reference=True,
                    note="DetBenchPredict, eager fp32, input pre-normalised")
    return engine, model


def transformers_reference(name: str, device: str, tmp: Path) -> tuple[Engine, nn.Module]:
    """(transformers ``DetrForObjectDetection`` + post-processing engine, our model loaded from its weights)."""
    import transformers

    backbone, dilation = DETR_BACKBONES[name]
    config = transformers.DetrConfig(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False,
                                     num_labels=91, auxiliary_loss=False, dilation=dilation)
    hf = transformers.DetrForObjectDetection(config).eval()
    path = tmp / f"{name}_hf.bin"
    torch.save(hf.state_dict(), path)
    model = scaledet.load(path, model=name, device=device)
    hf = hf.to(device)
    processor = transformers.DetrImageProcessor()

    def prepare(images):
        batch, mask = model.preprocess(images).inputs
        sizes = torch.tensor([list(image.shape[1:]) for image in images], device=device)
        return batch.to(device), (~mask).long().to(device), sizes

    def run(inputs):
        batch, pixel_mask, sizes = inputs
        outputs = hf(pixel_values=batch, pixel_mask=pixel_mask)
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)

    engine = Engine("transformers", run, prepare, reference=True,
                    note="DetrForObjectDetection + post_process, eager fp32, input pre-normalised")
    return engine, model


def rtdetr_hf_config(variant, num_classes: int):
    """The transformers ``RTDetrConfig`` with the layout of one of our RT-DETR variant rows
    (:class:`scaledet.models.rtdetr.RtDetrVariant`)."""
    import transformers

    backbone = transformers.RTDetrResNetConfig(
        embedding_size=variant.stem_width, hidden_sizes=list(variant.widths), depths=list(variant.depths),
        layer_type=variant.block, out_indices=[2, 3, 4])
    return transformers.RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=list(variant.widths[1:]), encoder_hidden_dim=variant.encoder_dim,
        encoder_attention_heads=variant.encoder_heads, encoder_ffn_dim=variant.encoder_ffn_dim,
        encoder_layers=variant.encoder_layers, hidden_expansion=variant.expansion, d_model=variant.decoder_dim,
        decoder_in_channels=[variant.encoder_dim] * 3, decoder_attention_heads=variant.decoder_heads,
        decoder_ffn_dim=variant.decoder_ffn_dim, decoder_layers=variant.decoder_layers,
        decoder_n_points=variant.decoder_points, num_queries=variant.num_queries, num_labels=num_classes,
        num_denoising=variant.num_denoising)


def rtdetr_reference(name: str, device: str, tmp: Path) -> tuple[Engine, nn.Module]:
    """(transformers ``RTDetrForObjectDetection`` + post-processing engine, our model loaded from its weights)."""
    import transformers

    hf = transformers.RTDetrForObjectDetection(rtdetr_hf_config(family_of(name).VARIANTS[name], 80)).eval()
    path = tmp / f"{name}_hf.bin"
    torch.save(hf.state_dict(), path)
    model = scaledet.load(path, model=name, device=device)
    hf = hf.to(device)
    processor = transformers.RTDetrImageProcessor()

    def prepare(images):
        sizes = torch.tensor([list(image.shape[1:]) for image in images], device=device)
        return model.preprocess(images).inputs[0].to(device), sizes

    def run(inputs):
        batch, sizes = inputs
        return processor.post_process_object_detection(hf(pixel_values=batch), threshold=0.0, target_sizes=sizes)

    engine = Engine("transformers", run, prepare, reference=True,
                    note="RTDetrForObjectDetection + post_process, eager fp32, input pre-resized")
    return engine, model


#: family package -> (the reference port's pip name, its engine builder)
REFERENCES = {"scaledet.models.efficientdet": ("effdet", effdet_reference),
              "scaledet.models.detr": ("transformers", transformers_reference),
              "scaledet.models.rtdetr": ("transformers", rtdetr_reference)}


def reference_engine(name: str, device: str, tmp: Path) -> tuple[Engine, nn.Module] | None:
    """The reference engine of model ``name`` and our model with its weights, or ``None`` (said on
    stderr) when that family has no reference port or the port is not installed."""
    package, build = REFERENCES.get(family_of(name).__name__, (None, None))
    if build is None:
        print(f"note: {name} has no reference port; timing ours only", file=sys.stderr)
        return None
    try:
        return build(name, device, tmp)
    except ImportError as error:
        print(f"note: {package} is not installed ({error}); timing ours only (pip install -e '.[dev]')",
              file=sys.stderr)
        return None
