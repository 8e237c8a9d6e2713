"""MkDocs hooks: MathJax served from the site itself (the copy jupyter-server-mathjax ships), so
that the algorithm boxes render offline, where no CDN can be reached."""

from __future__ import annotations

import re
import shutil
from pathlib import Path


def on_post_build(config, **kwargs) -> None:
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = Path(config["site_dir"]) / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(static, target, ignore=shutil.ignore_patterns("LICENSE"))


_ROLE = re.compile(r":(?:class|func|mod|meth|data|attr|exc|obj):<code>(~?)\.?([\w.]+)</code>")


def on_page_content(html: str, **kwargs) -> str:
    """The docstrings' Sphinx roles (``:class:`~deepdescent.optim.SGD```) as code: the last name
    where the role says ``~``, the whole path otherwise."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
