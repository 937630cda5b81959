#!/usr/bin/env python3
"""Prints a signed JWT for the benchmarks, signed by the openssl CLI (no Python packages).

Usage: loadtest/jwt_token.py RS256|ES256 PRIVATE_KEY_PEM KID [SECONDS_VALID]
"""
import base64
import json
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_ecdsa_to_raw(der: bytes, size: int) -> bytes:
    """ECDSA-Sig-Value (SEQUENCE of two INTEGERs) to JOSE's r || s."""
    def read_integer(offset: int):
        assert der[offset] == 0x02
        length = der[offset + 1]
        value = der[offset + 2: offset + 2 + length].lstrip(b"\x00")
        return value.rjust(size, b"\x00"), offset + 2 + length
    offset = 2 if der[1] < 0x80 else 3
    r, offset = read_integer(offset)
    s, _ = read_integer(offset)
    return r + s


def main() -> None:
    algorithm, key_file, kid = sys.argv[1:4]
    valid = int(sys.argv[4]) if len(sys.argv) > 4 else 3600
    header = {"alg": algorithm, "typ": "JWT", "kid": kid}
    now = int(time.time())
    claims = {"sub": "bench-user", "iss": "https://issuer.example", "aud": "api",
              "iat": now, "exp": now + valid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key_file],
        input=signing_input.encode(), capture_output=True, check=True).stdout
    if algorithm == "ES256":
        signature = der_ecdsa_to_raw(signature, 32)
    elif algorithm != "RS256":
        sys.exit(f"unsupported algorithm {algorithm}")
    print(f"{signing_input}.{b64url(signature)}")


if __name__ == "__main__":
    main()
