"""napari dock widgets. The only part of HydrAFM that imports Qt or napari."""
