"""Only a build lock nobody holds is cleared."""

import os
import time

from clmkit.buildlocks import clear_stale_build_locks


def test_a_build_lock_in_use_is_kept(tmp_path, monkeypatch):
    """Only a lock nobody holds goes: not one a build has just taken, nor an old one whose folder a process (ninja,
    the compiler) is working in."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    locks = {}
    for name, age in (("left", 600), ("just_taken", 0), ("building", 600)):
        folder = tmp_path / name  # torch builds straight under TORCH_EXTENSIONS_DIR
        folder.mkdir(parents=True)
        locks[name] = folder / "lock"
        locks[name].touch()
        os.utime(locks[name], (time.time() - age, time.time() - age))
    monkeypatch.chdir(tmp_path / "building")  # this process works there, as ninja would
    clear_stale_build_locks()
    assert {name: lock.exists() for name, lock in locks.items()} == {"left": False, "just_taken": True,
                                                                     "building": True}
