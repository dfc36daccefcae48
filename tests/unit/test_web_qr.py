"""The inline SVG QR code: well-formed, accessible, no script or style, and exactly the
modules of the code qrcode computes."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import qrcode

from gateway.web.qr import QUIET_ZONE, qr_svg

URI = "otpauth://totp/imap-gateway:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=imap-gateway"


def test_svg_is_one_accessible_element_without_script_or_style():
    svg = qr_svg(URI, label='QR code for "alice" <app>')
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("role") == "img" and root.get("aria-label") == 'QR code for "alice" <app>'
    assert "script" not in svg and "style=" not in svg and "href" not in svg
    assert not svg.startswith("<?xml")


def test_svg_draws_exactly_the_dark_modules():
    svg = qr_svg(URI, label="QR")
    qr = qrcode.QRCode(border=QUIET_ZONE, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(URI)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    size = len(matrix)
    assert f'viewBox="0 0 {size} {size}"' in svg
    drawn = {(int(x), int(y)) for x, y in re.findall(r"M(\d+) (\d+)h1v1h-1z", svg)}
    dark = {(x, y) for y, row in enumerate(matrix) for x, cell in enumerate(row) if cell}
    assert drawn == dark
    # the quiet zone stays light
    assert all(QUIET_ZONE <= x < size - QUIET_ZONE and QUIET_ZONE <= y < size - QUIET_ZONE
               for x, y in drawn)
