"""A SQLite job database on a network filesystem is refused with what to do instead; the filesystem type
lookup is injected (no mounting in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from svfrd.errors import ConfigError
from svfrd.jobs.database import filesystem_type_of, open_database, open_read_only, read_only_url

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /srv/share rw,relatime shared:20 - nfs4 fileserver:/export rw,vers=4.2
41 40 8:2 / /srv/share/local\\040disk rw,relatime shared:21 - ext4 /dev/sdb1 rw
42 22 0:51 / /mnt/remote rw,nosuid shared:22 - fuse.sshfs user@host:/data rw
"""


@pytest.mark.parametrize("kind", ["nfs4", "cifs", "smb3", "fuse.sshfs", "9p"])
def test_a_sqlite_file_on_a_network_filesystem_is_refused_with_what_to_do(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    with pytest.raises(ConfigError) as refusal:
        open_database(url, filesystem_type=lambda path: kind)
    message = str(refusal.value)
    assert f"({kind})" in message and "local disk" in message and "postgresql://" in message
    assert not (tmp_path / "state").exists(), "nothing is created on the share"


def test_readers_are_refused_too(tmp_path):
    url = read_only_url(f"sqlite:///{tmp_path / 'svfrd.db'}")
    seen: list[Path] = []

    def nfs(path: Path) -> str:
        seen.append(path)
        return "nfs"

    with pytest.raises(ConfigError, match="network filesystem"):
        open_database(url, read_only=True, filesystem_type=nfs)
    assert seen == [tmp_path / "svfrd.db"]


def test_a_sqlite_file_on_a_local_disk_opens(tmp_path):
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    open_database(url, filesystem_type=lambda path: "ext4").dispose()
    open_read_only(url).dispose()  # the real lookup: the test's temporary folder is local


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/me/state/svfrd.db", "ext4"),
        ("/srv/share/state/svfrd.db", "nfs4"),
        ("/srv/share/local disk/state/svfrd.db", "ext4"),  # a local disk mounted inside the share
        ("/mnt/remote/svfrd.db", "fuse.sshfs"),
        ("/srv/shared/svfrd.db", "ext4"),  # a sibling name, not inside /srv/share
    ],
)
def test_the_filesystem_is_the_deepest_mount_holding_the_file(path, kind):
    assert filesystem_type_of(Path(path), mountinfo=MOUNTINFO) == kind
