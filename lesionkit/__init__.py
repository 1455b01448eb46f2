"""lesionkit: the layer above the three tools (ctprep, ctlabel, ctseg).

It holds what needs all three at once: the demo (:mod:`lesionkit.demo`) and the
``ctprep`` entry point that adds ``ctprep demo`` to ctprep's commands
(:mod:`lesionkit.cli`), so that ctprep itself never imports ctlabel or ctseg.
"""
