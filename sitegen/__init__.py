"""sitegen: the static LinearScope site (index, explorer, compare) built from stores only.

See `sitegen build --help`; layout and formats in sitegen/build.py and sitegen/tiles.py.
"""
