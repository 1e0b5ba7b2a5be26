"""`pellucid check` says whether VMs start as clones of templates, where those are kept, and the
cgroup their builds are charged to."""

from pellucid import check, config
from pellucid.vm import cloning


def test_templates_off_is_reported():
    report = check.Report()
    check.template_check(config.parse("[hypervisor]\ntemplates = false\n"), report)
    (item,) = report.items
    assert (item.name, item.ok, item.required) == ("templates", True, False)
    assert item.detail.startswith("off")


def test_templates_on_names_the_store_the_count_and_the_cgroups(tmp_path, monkeypatch):
    monkeypatch.setattr(cloning, "template_cgroups", lambda: ["/sys/fs/cgroup/memory/pellucid-templates"])
    report = check.Report()
    check.template_check(config.parse(f'[hypervisor]\ntemplate_dir = "{tmp_path}"\n'), report)
    (item,) = report.items
    assert item.ok and item.detail == (f"on: VMs start as clones of templates of their size class in {tmp_path} "
                                       "(0 built), built in /sys/fs/cgroup/memory/pellucid-templates")
