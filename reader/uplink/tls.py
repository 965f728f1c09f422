"""Client TLS contexts for the uplinks: verification on by default, optional client certificate."""

from __future__ import annotations

import ssl

from reader.uplink.errors import UplinkConfigError
from reader.uplink.settings import TlsSettings

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """An SSLContext for one uplink; raises UplinkConfigError if a file cannot be loaded."""
    try:
        if settings.verify:
            ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file is not None else None)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = _VERSIONS[settings.minimum_version]
        if settings.client_cert_file is not None:
            ctx.load_cert_chain(
                str(settings.client_cert_file),
                str(settings.client_key_file) if settings.client_key_file is not None else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise UplinkConfigError(f"TLS setup failed: {exc}") from exc
    return ctx
