"""``faultline keys``: make a signing key pair, sign model manifests, show a key's id.

The private key stays on the machine that builds libraries (and trains models); gateways
get the public key (``library.trusted_keys``). ``library build --signing-key`` signs
library versions; ``keys sign`` signs model manifests (``models/*.json`` -> ``.sig``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from faultline.fault_library.signing import (
    SignatureError,
    SigningKey,
    generate_keypair,
    key_id,
    load_public_key,
    sign_file,
)

EXIT_CODES = "exit status: 0 done, 1 refused or failed (the message says why)"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "keys",
        help="ed25519 keys that sign library versions and model manifests",
        description=(
            "Make a signing key pair, sign model manifests with it, or print a public key's "
            "id. Gateways trust public keys listed in library.trusted_keys; with "
            "library.require_signature they serve only versions signed by one of them."
        ),
        epilog=EXIT_CODES,
    )
    verbs = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    gen = verbs.add_parser(
        "generate",
        help="write NAME.key (private, mode 0600) and NAME.pub (public)",
        epilog=EXIT_CODES,
    )
    gen.add_argument("name", help="path without extension, e.g. /secure/plant-2026")
    gen.set_defaults(handler=_generate)
    sign = verbs.add_parser(
        "sign",
        help="sign files (model manifests) into FILE.sig",
        epilog=EXIT_CODES,
    )
    sign.add_argument("files", nargs="+", help="files to sign, e.g. models/*.json")
    sign.add_argument("--key", required=True, help="private key (PEM) from `keys generate`")
    sign.set_defaults(handler=_sign)
    show = verbs.add_parser("id", help="print the key id of public key files", epilog=EXIT_CODES)
    show.add_argument("files", nargs="+", help="public key files (PEM)")
    show.set_defaults(handler=_id)


def _fail(message: str) -> int:
    print(f"faultline: {message}", file=sys.stderr)
    return 1


def _generate(args: argparse.Namespace) -> int:
    private, public = Path(f"{args.name}.key"), Path(f"{args.name}.pub")
    try:
        kid = generate_keypair(private, public)
    except (SignatureError, OSError) as exc:
        return _fail(str(exc))
    print(f"key id {kid}: private {private} (keep it off gateways), public {public}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:
        key = SigningKey.load(args.key)
        for name in args.files:
            print(f"signed {name} -> {sign_file(name, key)} (key {key.key_id})")
    except (SignatureError, OSError) as exc:
        return _fail(str(exc))
    return 0


def _id(args: argparse.Namespace) -> int:
    try:
        for name in args.files:
            print(f"{key_id(load_public_key(name))}  {name}")
    except SignatureError as exc:
        return _fail(str(exc))
    return 0
