"""Size classes: the smallest class that holds what the OCI limits ask, or none (cold boot)."""

import pytest

from pellucid.vm.size_class import SizeClass, size_class


@pytest.mark.parametrize("memory, vcpus, host, want", [
    (256, 1, 2, SizeClass(256, 1)),
    (257, 1, 2, SizeClass(512, 1)),
    (256 + 512, 2, 2, SizeClass(1024, 2)),
    (8192, 1, 64, SizeClass(8192, 1)),
    (3, 3, 4, SizeClass(256, 4)),
    (256, 3, 3, SizeClass(256, 3)),  # a host with 3 CPUs: its count is its largest class
    (256, 8, 16, SizeClass(256, 8)),
])
def test_smallest_class_that_holds_the_request(memory, vcpus, host, want):
    assert size_class(memory, vcpus, host) == want


@pytest.mark.parametrize("memory, vcpus, host", [(8193, 1, 2), (256, 3, 2), (256, 9, 64)])
def test_beyond_the_largest_class_none(memory, vcpus, host):
    assert size_class(memory, vcpus, host) is None


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError):
        size_class(0, 1, 2)


def test_class_names():
    assert SizeClass(512, 2).name == "512m2c"


def test_vcpu_classes_follow_the_host():
    from pellucid.vm.size_class import vcpu_classes
    assert vcpu_classes(2) == (1, 2)
    assert vcpu_classes(3) == (1, 2, 3)
    assert vcpu_classes(64) == (1, 2, 4, 8)
