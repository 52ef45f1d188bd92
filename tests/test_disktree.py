"""The disk tree under concurrent installs and removals of one model's versions."""

from __future__ import annotations

import threading
import traceback

from replica.disktree import DiskTree


def test_installs_and_removals_of_one_models_versions_never_race(tmp_path):
    """Removing a model's last version deletes its empty folder while another version of it may be installing
    (the disk cache evicts one version as another arrives): the install must still land."""
    tree = DiskTree(tmp_path / "state", runtime=tmp_path / "run")
    tree.prepare()
    errors: list[str] = []

    def churn(version: int) -> None:
        try:
            for i in range(300):
                staging = tree.new_staging_dir("m", version)
                (staging / "model.json").write_text(str(i))
                tree.install(staging, "m", version, {"fingerprint": str(i)})
                assert (tree.version_dir("m", version) / "model.json").read_text() == str(i)
                tree.remove("m", version)
        except Exception:  # noqa: BLE001 - reported below, with where it happened
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=churn, args=(v,)) for v in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert not any(tree.models.iterdir())  # every version removed, and the model's folder with them
