"""The run's plots: curves.png draws the main loss terms (DETR-family runs log 20-40)."""

import warnings

from scaledet.engine.plots import _auxiliary, plot_curves


def test_curves_draw_the_main_loss_terms_and_name_the_hidden_ones(tmp_path):
    """An RT-DETR log has loss_vfl / bbox / giou for every auxiliary layer, the encoder and three denoising groups:
    a legend of 25 terms squeezed the plots and matplotlib warned on the console."""
    terms = ["loss", "loss_vfl", "loss_bbox", "loss_giou"] + [f"loss_{kind}_{tag}" for kind in ("vfl", "bbox", "giou")
                                                              for tag in ("aux_0", "aux_1", "enc", "dn_0", "dn_1", "dn_2")]
    records = [{"kind": "step", "step": step, "lr": 1e-3, **{term: 1.0 / step for term in terms}} for step in range(1, 6)]
    records.append({"kind": "epoch", "epoch": 0, "AP": 0.1, "AP50": 0.2})
    assert [t for t in terms if not _auxiliary(t)] == ["loss", "loss_vfl", "loss_bbox", "loss_giou"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib layout warning
        path = plot_curves(records, tmp_path / "curves.png")
    assert path.stat().st_size > 0
