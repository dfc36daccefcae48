"""QR codes as inline SVG, drawn here from the ``qrcode`` package's module matrix.

Why not ``qrcode``'s own SVG factories: their output depends on the version (sizes in
mm, no background, an XML declaration in some), and the page needs one small element it
can embed as is. Why not an image URL or a third-party service: the code holds a TOTP
seed, which must not leave the response that shows it (no second request, no cache, no
foreign host). The SVG has no script and no style attribute, so the Content-Security-
Policy needs no exception for it.
"""

from __future__ import annotations

from html import escape

import qrcode
import qrcode.constants

__all__ = ["qr_svg"]

#: Light modules around the code: the QR specification asks for four.
QUIET_ZONE = 4


def qr_svg(data: str, *, label: str) -> str:
    """An ``<svg>`` element showing ``data`` as a QR code, with ``label`` as its
    accessible name. One unit per module; the page's CSS sets the display size."""
    qr = qrcode.QRCode(border=QUIET_ZONE, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    size = len(matrix)
    path = "".join(f"M{x} {y}h1v1h-1z"
                   for y, row in enumerate(matrix) for x, dark in enumerate(row) if dark)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="qr" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="{escape(label)}" shape-rendering="crispEdges">'
        f'<rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path d="{path}" fill="#000"/></svg>'
    )
