from pathlib import Path

from maas.reports import write_learning_curve


def test_learning_curve_is_a_png(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 1 / e, "accuracy": 1 - 1 / (e + 1), "val_loss": 1.1 / e,
                "val_accuracy": 0.9 - 1 / (e + 2)} for e in range(1, 6)]
    path = tmp_path / "curve.png"
    write_learning_curve(history, path, title="run")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
