"""The entries of a comparison and the configs they train with."""
from visattn.comparison import Entry, entry_config, make_entries
from visattn.engine.config import load_config


def test_entry_configs_keep_the_encoder_arguments_only():
    base = load_config(None, ["model.name=attnet", "model.kwargs={encoder: resnet18, output_stride: 16, aux: true, "
                              "attention: sge, groups: 8}"])
    assert entry_config(base, Entry("danet", "danet"), 1).model.kwargs == {"encoder": "resnet18", "output_stride": 16,
                                                                           "aux": True}
    bam = entry_config(base, Entry("attnet-bam", "attnet", "bam"), 0, "out/bam")
    assert bam.model.kwargs == {"encoder": "resnet18", "output_stride": 16, "aux": True, "attention": "bam"}
    assert (bam.train.seed, bam.run.dir) == (0, "out/bam")
    assert entry_config(base, Entry("attnet-sge", "attnet", "sge"), 2).model.kwargs == base.model.kwargs
    assert entry_config(base, Entry("attnet", "attnet"), 2).model.kwargs == base.model.kwargs
    base_copy = load_config(None, ["model.name=attnet", "model.kwargs={encoder: resnet18, output_stride: 16, aux: true, "
                                   "attention: sge, groups: 8}"])
    assert base == base_copy  # the base is left as it was
    assert [e.name for e in make_entries(["fcn", "danet"], ["psa"])] == ["fcn", "danet", "attnet-psa"]
