"""The ``threadline`` command line, one module per area (each owns its commands and their parsers);
``main`` assembles them, ``common`` holds what the areas share."""
