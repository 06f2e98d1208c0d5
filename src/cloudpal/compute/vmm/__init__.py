"""MicroVM drivers: the interface (``base``) and QEMU's microvm machine (``qemu``)."""

from cloudpal.compute.vmm.base import Disk, Driver, Vm, VmError, VmSpec
from cloudpal.compute.vmm.qemu import QemuMicrovm, QemuVm

__all__ = ["Disk", "Driver", "QemuMicrovm", "QemuVm", "Vm", "VmError", "VmSpec"]
