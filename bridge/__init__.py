"""matrix-dma-bridge: a Matrix bridge to DMA-interoperable messengers."""

__version__ = "0.1.0"
