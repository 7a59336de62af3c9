"""Running VMs behind a driver interface (QEMU now), and deriving their state."""
