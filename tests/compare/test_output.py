"""The layout of a comparison's output directory."""
from visattn.comparison import CompareDir, Entry


def test_compare_dir_layout(tmp_path):
    cdir = CompareDir(tmp_path)
    entry = Entry("attnet-bam", "attnet", "bam")
    assert cdir.run(entry, 2).path == tmp_path / "runs" / "attnet-bam" / "seed2"
    assert cdir.log(entry, 2) == tmp_path / "logs" / "attnet-bam-seed2.log"
