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


def test_a_first_build_of_cpu_adam_is_announced_a_finished_one_is_not(tmp_path, monkeypatch, capsys):
    """DeepSpeed compiles its CPU Adam for a minute or more the first time, printing nothing: a line says so first."""
    from clmkit.buildlocks import announce_cpu_adam_build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    offloaded = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    announce_cpu_adam_build(offloaded)
    assert "building DeepSpeed's CPU Adam once on this machine (about a minute" in capsys.readouterr().out
    (tmp_path / "cpu_adam").mkdir()
    (tmp_path / "cpu_adam" / "cpu_adam.so").write_bytes(b"")
    announce_cpu_adam_build(offloaded)
    announce_cpu_adam_build({"zero_optimization": {"stage": 2}})  # the optimizer on the GPU: no CPU Adam
    assert capsys.readouterr().out == ""
