"""Loc's ``groundingdino`` backend (modules/groundingdino_original.py) on a tiny model made by the package.

The checkpoint is saved as the repository saves its own (``{"model": ...,
"args": argparse.Namespace}``) next to its ``.py`` config, and given to visprog
as the folder, or as the ``.pth`` with the ``config`` option. Boxes are
compared with the package's own ``predict`` (``groundingdino.util.inference``)
on the same model and the same preprocessed image. Random weights give scores
close together, so thresholds are picked from the scores the model gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from groundingdino.util.inference import predict
from PIL import Image
from visprog.modules.groundingdino_original import load_groundingdino

from visprog.apps.cli import main
from visprog.errors import StepError
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import RunCache, Runtime

#: Small inputs keep the Swin-T backbone fast; the package's demo uses 800.
SMALL: dict[str, Any] = {"image_size": 160, "nms_iou": 1.0}


def loc(model: Path, image: Image.Image, program: str = "B=Loc(image=IMAGE, object='cat')\nRESULT=B\n", **options: Any):
    rt = Runtime(device_request="cpu", modules={"Loc": {"backend": "groundingdino", "model": str(model), **options}})
    return Interpreter(default_registry(), rt).run(program, {"IMAGE": image}, cache=RunCache())


def reference(folder: Path, image: Image.Image, caption: str, box_threshold: float) -> tuple[Any, Any]:
    """The package's own ``predict`` on the same model: boxes in pixels (xyxy) and scores, best first."""
    import groundingdino.datasets.transforms as T

    model = load_groundingdino(str(folder / "tiny_dino.pth"), str(folder / "tiny_dino_cfg.py"), None).eval()
    transform = T.Compose(
        [T.RandomResize([160], max_size=266), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    pixels, _ = transform(image, None)
    boxes, scores, _ = predict(model, pixels, caption, box_threshold, 0.25, device="cpu")
    w, h = image.size
    cx, cy, bw, bh = (boxes * torch.tensor([w, h, w, h])).unbind(-1)
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).clamp(min=0)
    xyxy = torch.minimum(xyxy, torch.tensor([w, h, w, h], dtype=xyxy.dtype))
    order = scores.argsort(descending=True)
    return xyxy[order], scores[order]


def all_scores(folder: Path, image: Image.Image, obj: str = "cat") -> list[float]:
    found = loc(folder, image, f"B=Loc(image=IMAGE, object='{obj}')\nRESULT=B\n", box_threshold=0.0, **SMALL)
    return sorted(d.score for d in found.step("B").output)


def test_boxes_are_the_packages_predictions(dino_folder: Path, astronaut: Image.Image) -> None:
    scores = all_scores(dino_folder, astronaut)
    threshold = scores[len(scores) // 2]  # about half the boxes pass
    found = loc(dino_folder, astronaut, box_threshold=threshold, **SMALL).step("B").output
    boxes, expected = reference(dino_folder, astronaut, "cat", threshold)
    assert 0 < len(found) == len(expected)
    assert [d.score for d in found] == pytest.approx(expected.tolist(), abs=1e-5)  # best first
    assert {d.label for d in found} == {"cat"}
    # the same (score, box) pairs; random scores can tie, and ties may come in either order
    ours = sorted((round(d.score, 4), *d.box) for d in found)
    theirs = sorted((round(score, 4), *box) for score, box in zip(expected.tolist(), boxes.tolist(), strict=True))
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-3)
    assert all(0 <= d.box[0] < d.box[2] <= 192 and 0 <= d.box[1] < d.box[3] <= 160 for d in found)


def test_box_threshold_and_nms_change_the_boxes(dino_folder: Path, astronaut: Image.Image) -> None:
    scores = all_scores(dino_folder, astronaut)
    assert len(scores) == 30  # every query's box at threshold 0 (the config's 30 queries), no suppression
    low, high = scores[len(scores) // 4], scores[3 * len(scores) // 4]
    many = loc(dino_folder, astronaut, box_threshold=low, **SMALL).step("B").output
    few = loc(dino_folder, astronaut, box_threshold=high, **SMALL).step("B").output
    assert len(few) < len(many) and all(d.score > high for d in few)
    suppressed = loc(dino_folder, astronaut, box_threshold=low, image_size=160, nms_iou=0.3).step("B").output
    assert len(suppressed) < len(many)


def test_queries_on_one_image_in_one_pass_equal_separate_runs(dino_folder: Path, astronaut: Image.Image) -> None:
    # 'cat' and 'dog' go through the model together; 'red car' (one more token) in a pass of its own
    steps = {"A": "cat", "B": "dog", "C": "red car"}
    program = "".join(f"{name}=Loc(image=IMAGE, object='{obj}')\n" for name, obj in steps.items()) + "RESULT=C\n"
    both = loc(dino_folder, astronaut, program, box_threshold=0.0, **SMALL)
    for name, obj in steps.items():
        alone = loc(
            dino_folder, astronaut, f"B=Loc(image=IMAGE, object='{obj}')\nRESULT=B\n", box_threshold=0.0, **SMALL
        )
        together, single = both.step(name).output, alone.step("B").output
        assert [d.label for d in together] == [obj] * len(single)
        assert [d.score for d in together] == pytest.approx([d.score for d in single], abs=1e-4)


def test_the_checkpoint_and_config_can_be_given_apart(dino_folder: Path, astronaut: Image.Image) -> None:
    in_folder = loc(dino_folder, astronaut, box_threshold=0.0, **SMALL).step("B").output
    apart = loc(
        dino_folder / "tiny_dino.pth",
        astronaut,
        box_threshold=0.0,
        config=str(dino_folder / "tiny_dino_cfg.py"),
        **SMALL,
    )
    assert [d.box for d in apart.step("B").output] == [d.box for d in in_folder]


def test_a_config_that_does_not_fit_is_named(dino_folder: Path, astronaut: Image.Image, bert_dir: Path) -> None:
    # the package's own Swin-T config has 6 encoder layers; the tiny checkpoint has one
    with pytest.raises(StepError) as err:
        loc(
            dino_folder / "tiny_dino.pth",
            astronaut,
            config="GroundingDINO_SwinT_OGC.py",
            text_encoder=str(bert_dir),
            **SMALL,
        )
    message = str(err.value)
    assert "tiny_dino.pth' does not fit the config" in message and "GroundingDINO_SwinT_OGC.py" in message


def test_without_a_config_the_packages_swin_t_config_is_chosen(dino_folder: Path, astronaut: Image.Image) -> None:
    # a Swin-T checkpoint alone: the package's Swin-T config, whose text encoder (bert-base-uncased) is not cached
    with pytest.raises(StepError) as err:
        loc(dino_folder / "tiny_dino.pth", astronaut, **SMALL)
    message = str(err.value)
    assert "text encoder 'bert-base-uncased'" in message and "GroundingDINO_SwinT_OGC.py" in message
    assert "Loc.text_encoder" in message


def test_a_folder_must_hold_one_checkpoint_and_one_config(tmp_path: Path, astronaut: Image.Image) -> None:
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.pth").write_bytes(b"")
    with pytest.raises(StepError) as err:
        loc(tmp_path, astronaut, **SMALL)
    assert "must hold one .pth checkpoint and one .py config (it has: a.pth, b.pth)" in str(err.value)


def test_an_unknown_config_name_is_named(dino_folder: Path, astronaut: Image.Image) -> None:
    with pytest.raises(StepError) as err:
        loc(dino_folder / "tiny_dino.pth", astronaut, config="GroundingDINO_SwinX.py", **SMALL)
    assert "'GroundingDINO_SwinX.py' is neither a file nor one of the package's configs" in str(err.value)


def test_loc_through_visprog_exec(dino_folder: Path, astronaut: Image.Image, tmp_path: Path, capsys: Any) -> None:
    image = tmp_path / "astronaut.png"
    astronaut.save(image)
    argv = ["exec", "B=Loc(image=IMAGE, object='cat')\nRESULT=Count(box=B)", "-i", str(image), "--json"]
    argv += ["--device", "cpu", "--backend", "Loc=groundingdino", "--model", f"Loc={dino_folder}"]
    argv += ["--option", "Loc.image_size=160", "--option", "Loc.nms_iou=1.0", "--option", "Loc.box_threshold=0.0"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["result"] == 30
