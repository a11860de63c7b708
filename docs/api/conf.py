"""Sphinx configuration of the API reference (built offline, warnings as errors):

    sphinx-build -W --keep-going -b html docs/api build/docs
"""

project = "ppl_vae"
author = "the ppl_vae developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
# the docstrings are reST with :param: fields; napoleon only for the odd Google-style one
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
