"""A stand-in for the AWS Price List API on 127.0.0.1 (moto has none).

It answers `AWSPriceListService.GetProducts` as AWS does: JSON 1.1 over POST, `PriceList` a
list of JSON *strings*, one product each, with its on-demand terms. A product matches when
every TERM_MATCH filter equals its attribute. Point boto3 at it with
`AWS_ENDPOINT_URL_PRICING=<url>`; each request is kept (`requests`) with the region its
signature names, so a test can check the filters and the endpoint region the client chose.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TARGET = "AWSPriceListService.GetProducts"
EFFECTIVE = "2026-11-01T00:00:00Z"


@dataclass(frozen=True)
class Seen:
    target: str
    region: str
    """The region of the request's SigV4 credential scope."""
    body: dict[str, Any]

    @property
    def filters(self) -> dict[str, str]:
        return {f["Field"]: f["Value"] for f in self.body.get("Filters", [])}


@dataclass
class PriceListStandIn:
    """Products by (regionCode, instanceType) -> USD per hour; `refuse` answers every call with
    that error code instead (e.g. "AccessDeniedException")."""

    prices: dict[tuple[str, str], float] = field(default_factory=dict)
    refuse: str = ""
    requests: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> PriceListStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/", self.headers["Authorization"])
                seen = Seen(self.headers.get("X-Amz-Target", ""), scope[1] if scope else "", body)
                stand_in.requests.append(seen)
                status, answer = stand_in.answer(seen)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        if self.refuse:
            return 400, {"__type": self.refuse, "message": "refused by the stand-in"}
        if seen.target != TARGET or seen.body.get("ServiceCode") != "AmazonEC2":
            return 400, {"__type": "InvalidParameterException", "message": "unknown service"}
        wanted = seen.filters
        products = [
            json.dumps(product(region, instance_type, usd))
            for (region, instance_type), usd in self.prices.items()
            if all(product_attributes(region, instance_type).get(k) == v for k, v in wanted.items())
        ]
        return 200, {"FormatVersion": "aws_v1", "PriceList": products}


def product_attributes(region: str, instance_type: str) -> dict[str, str]:
    return {
        "regionCode": region,
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }


def product(region: str, instance_type: str, usd: float) -> dict[str, Any]:
    """One product of GetProducts' answer, in AWS's layout."""
    sku = f"SKU{abs(hash((region, instance_type))) % 10**8:08d}"
    return {
        "product": {
            "productFamily": "Compute Instance",
            "sku": sku,
            "attributes": {
                **product_attributes(region, instance_type),
                "servicecode": "AmazonEC2",
            },
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                f"{sku}.JRTCKXETXF": {
                    "offerTermCode": "JRTCKXETXF",
                    "sku": sku,
                    "effectiveDate": EFFECTIVE,
                    "priceDimensions": {
                        f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "description": f"${usd} per On Demand Linux {instance_type} Hour",
                            "appliesTo": [],
                            "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                            "beginRange": "0",
                            "pricePerUnit": {"USD": f"{usd:.10f}"},
                        }
                    },
                    "termAttributes": {},
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": EFFECTIVE,
    }
