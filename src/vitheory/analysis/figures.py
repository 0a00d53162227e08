"""Figure output shared by every experiment: each figure is written as PNG (for the Markdown report) and PDF."""
from __future__ import annotations

import os


def save_figure(fig, fig_dir: str, name: str) -> str:
    """Write ``fig`` as ``fig_dir/name.png`` and ``.pdf``, close it, and return ``name``."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(os.path.join(fig_dir, f"{name}.png"), dpi=130)
    fig.savefig(os.path.join(fig_dir, f"{name}.pdf"))
    plt.close(fig)
    return name
