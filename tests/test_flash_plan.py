"""Flash planning: skip by hash, refuse what cannot fit before sending a byte."""

import pytest

from tinyhost import boards
from tinyhost.errors import DoesNotFit
from tinyhost.flash import (FS_METADATA_BLOCKS, FlashItem, check_fits_free_space, check_fits_profile,
                            firmware_items, make_plan)
from tinyhost.paths import firmware_dir


def item(remote, nbytes, sha="a" * 64):
    return FlashItem(local=firmware_dir() / remote.lstrip("/"), remote=remote, nbytes=nbytes, sha256=sha)


def test_firmware_items_cover_the_package_with_real_hashes():
    items = firmware_items()
    remotes = {i.remote for i in items}
    assert "/tinyfw/__init__.py" in remotes or any(r.startswith("/tinyfw/") for r in remotes)
    for i in items:
        assert len(i.sha256) == 64 and i.nbytes == i.local.stat().st_size


def test_unchanged_files_are_skipped_changed_and_new_uploaded():
    same, changed, new = item("/a.py", 10, "1" * 64), item("/b.py", 20, "2" * 64), item("/c.py", 30, "3" * 64)
    on_board = {"/a.py": ("1" * 64, 10), "/b.py": ("f" * 64, 99)}
    plan = make_plan([same, changed, new],
                     remote_hash=lambda p: on_board.get(p, (None, 0))[0],
                     remote_size=lambda p: on_board[p][1])
    assert plan.skip == [same] and plan.upload == [changed, new]
    assert plan.replaced_bytes == {"/b.py": 99} and plan.bytes_to_send == 50


def test_model_bigger_than_the_whole_filesystem_is_refused_with_numbers():
    board = boards.load("nano33ble")
    with pytest.raises(DoesNotFit) as err:
        check_fits_profile([item("/models/vww.tflite", board.fs_bytes + 1)], board)
    assert str(board.fs_bytes + 1) in str(err.value) and str(board.fs_bytes) in str(err.value)


def test_free_space_is_checked_in_write_order():
    block = 4096
    six_blocks = 6 * block - 32         # littlefs: blocks 1..5 of a file start with 8 skip-list pointers in all
    # 8 blocks free: a 6-block file replacing a 6-block one fits (old freed after the rename) ...
    plan = make_plan([item("/m.tflite", six_blocks)], lambda p: "0" * 64, lambda p: six_blocks)
    check_fits_free_space(plan, (6 + FS_METADATA_BLOCKS) * block, block)
    # ... but two new 6-block files do not fit 10.
    plan = make_plan([item("/x", six_blocks), item("/y", six_blocks)], lambda p: None, lambda p: 0)
    with pytest.raises(DoesNotFit, match="/y"):
        check_fits_free_space(plan, 10 * block, block)


def test_free_space_counts_the_blocks_littlefs_gives_a_file():
    # 24 KB of data takes 7 blocks of 4 KB, not 6 (the skip-list pointers); a file of <= 128 bytes none (inline)
    block = 4096
    plan = make_plan([item("/m.tflite", 6 * block)], lambda p: None, lambda p: 0)
    with pytest.raises(DoesNotFit, match="/m.tflite"):
        check_fits_free_space(plan, (6 + FS_METADATA_BLOCKS) * block, block)
    check_fits_free_space(plan, (7 + FS_METADATA_BLOCKS) * block, block)
    tiny = make_plan([item("/a", 100), item("/b", 100)], lambda p: None, lambda p: 0)
    check_fits_free_space(tiny, FS_METADATA_BLOCKS * block, block)
