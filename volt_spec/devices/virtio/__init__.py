"""virtio over MMIO: the transport (`mmio`), split virtqueues (`queue`) and device models.

Layout: `mmio.VirtioMmio(device, memory, irq)` is the bus device; `blk.VirtioBlk` and
`net.VirtioNet` are the device models it drives; `tap` holds the network backends and
`testing` a driver-side helper for tests. Like every device here, nothing in this
package imports the KVM layer: guest memory and the interrupt are injected.
"""
