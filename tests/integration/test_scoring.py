"""``python -m maas score`` on the shared cluster: a Parquet file of digits rows scored by a pool of
model-holding Ray Data actors, equal to the model's own answers; a bad row stops it before
anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maas.cli import main as cli_main


def _digits_table(rows: int, with_nan_at: int | None = None) -> tuple[pa.Table, np.ndarray]:
    from sklearn.datasets import load_digits

    images = load_digits().images[:rows].astype(np.float32)
    flat = images.reshape(rows, -1).copy()
    if with_nan_at is not None:
        flat[with_nan_at, 5] = np.nan
    columns = {"row_id": pa.array(np.arange(rows) + 1000)}
    columns.update({f"p{i}": pa.array(flat[:, i]) for i in range(flat.shape[1])})
    return pa.table(columns), images


def test_score_writes_each_rows_prediction_probabilities_and_version(trained, tiny_job, tmp_path: Path,
                                                                      capsys) -> None:
    from maas.serving.model import LoadedModel

    table, images = _digits_table(300)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=64)
    version = trained.version.version
    out = tmp_path / "scored"
    code = cli_main(["--registry", tiny_job.registry.root, "score", "--model", f"digits_mlp:{version}",
                     "--input", str(tmp_path / "rows.parquet"), "--output", str(out), "--keep", "row_id",
                     "--actors", "2", "--batch-size", "50"])
    assert code == 0, capsys.readouterr().err
    assert f"scored 300 rows with digits_mlp version {version}" in capsys.readouterr().out
    written = pq.read_table(out)
    assert written.schema.field("prediction").type == pa.string()
    scored = written.to_pandas().sort_values("row_id")
    assert scored["row_id"].tolist() == list(range(1000, 1300))
    assert set(scored["model_version"]) == {version}
    expected = LoadedModel.from_registry(tiny_job.registry.root, "digits_mlp", version).predict(images)
    probabilities = scored[[f"probability_{c}" for c in range(10)]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert scored["prediction"].tolist() == [str(c) for c in expected.argmax(axis=1)]
    assert not list(tmp_path.glob(".scored.staging-*"))


@pytest.mark.parametrize("problem, message", [("nan", "row 17, column 'p5' (nan)"),
                                              ("columns", "the model takes 64 values")])
def test_a_bad_input_is_refused_by_name_and_nothing_is_written(trained, tiny_job, tmp_path: Path, capsys,
                                                               problem: str, message: str) -> None:
    table, _ = _digits_table(40, with_nan_at=17 if problem == "nan" else None)
    if problem == "columns":
        table = table.drop(["p63"])
    pq.write_table(table, tmp_path / "rows.parquet")
    out = tmp_path / "scored"
    code = cli_main(["--registry", tiny_job.registry.root, "score", "--model", "digits_mlp",
                     "--input", str(tmp_path / "rows.parquet"), "--output", str(out), "--keep", "row_id"])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()
