"""What a person sees: a command prints the project's own lines, not library chatter
(Lightning's tips and device lines, deprecation warnings, checkpoint-restore lines,
matplotlib's font cache). The filters are by name (``recsys.cli.main.quiet_libraries``)."""
from __future__ import annotations

import logging
import warnings

from tests.helpers import run

LIBRARY_LINES = ["Tip:", "litlogger", "GPU available", "TPU available", "LeafSpec", "_pytree",
                 "Restoring states from the checkpoint", "Loaded model weights", "`Trainer.fit` stopped",
                 "matplotlib.font_manager", "fontManager", "faiss.loader", "rank_zero"]


def test_train_prints_no_library_chatter(tmp_path):
    out = tmp_path / "run"
    res = run("train", "experiment=sasrec_synthetic", "data.n_users=200", "data.n_items=60", "datamodule.max_len=10",
              "net.hidden=16", "~logger", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path,
              env={"MPLCONFIGDIR": str(tmp_path / "mpl")},  # an empty font cache: matplotlib rebuilds it
              fresh=True)  # import-time chatter too: a new interpreter, not the tests' fork server
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout + res.stderr
    assert "summary:" in res.stdout and "SASRec/FullSoftmaxCE" in res.stdout
    seen = [ln for ln in text.splitlines() if any(s in ln for s in LIBRARY_LINES)]
    assert not seen, "\n".join(seen)


def test_quiet_libraries_filters_by_name_only():
    """Only the named loggers go to WARNING, only the named warning is ignored."""
    from recsys.cli.main import QUIET_LOGGERS, quiet_libraries

    levels = {n: logging.getLogger(n).level for n in (*QUIET_LOGGERS, "", "pytorch_lightning", "recsys")}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            quiet_libraries()
            warnings.warn("an unrelated FutureWarning", FutureWarning)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("an unrelated UserWarning", UserWarning)
        assert [str(w.message) for w in caught] == ["an unrelated FutureWarning", "an unrelated UserWarning"]
        assert all(logging.getLogger(n).level == logging.WARNING for n in QUIET_LOGGERS)
        for n in ("", "pytorch_lightning", "recsys"):  # the root, Lightning's own, the project's: untouched
            assert logging.getLogger(n).level == levels[n], n
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
