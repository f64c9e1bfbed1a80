"""Rewrites a zstd newc initramfs with /init (or the entry ENTRY) replaced by the file
NEW, every other entry byte for byte.

usage: swap-init.py IN.zst NEW OUT.zst [ENTRY]
"""
import subprocess
import sys

src, new_init, dst = sys.argv[1:4]
entry = (sys.argv[4] if len(sys.argv) > 4 else "init").encode()
data = subprocess.run(["zstd", "-dc", src], check=True, capture_output=True).stdout
init = open(new_init, "rb").read()
pad = lambda n: (4 - n % 4) % 4
out = bytearray()
i = 0
found = False
while i < len(data):
    hdr = data[i : i + 110]
    if hdr[:6] != b"070701":
        break
    namesize = int(hdr[94:102], 16)
    filesize = int(hdr[54:62], 16)
    name_end = i + 110 + namesize
    name = data[i + 110 : name_end - 1]
    body_start = name_end + pad(110 + namesize)
    body = data[body_start : body_start + filesize]
    nxt = body_start + filesize + pad(filesize)
    if name in (entry, b"./" + entry, b"/" + entry):
        found = True
        hdr = hdr[:54] + b"%08X" % len(init) + hdr[62:]
        body = init
    out += hdr + data[i + 110 : body_start] + body + b"\0" * pad(len(body))
    i = nxt
    if name == b"TRAILER!!!":
        break
if not found:
    sys.exit(f"{src}: no /{entry.decode()} entry")
out += b"\0" * pad(len(out))
open(dst, "wb").write(subprocess.run(["zstd", "-9", "-q", "-c"], input=bytes(out), check=True, capture_output=True).stdout)
