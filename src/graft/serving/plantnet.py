"""A Pl@ntNet-compatible identification API: ``POST /v2/identify/{project}``, so an app or script written for
Pl@ntNet (``https://my-api.plantnet.org/v2/identify/all?api-key=...``) works against a graft server by changing its
base URL to ``http://HOST:PORT/v2/identify``.

Same engine, same limits and same decoding as graft's own ``/identify``; the request and answer follow Pl@ntNet's
published API: query ``api-key``, ``nb-results``, ``lang``, ``include-related-images``, ``no-reject``, ``type``,
``detailed``; multipart ``images`` (1-5, at most 50 MB together) and ``organs`` (one per image, as form fields or
query parameters). Errors are ``{"statusCode", "error", "message"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from graft.data.taxonomy import Taxon
from graft.model.identification import Identification, Model, identify_images
from graft.serving.keys import WHOLE_NUMBER

PREFIX = "/v2/"
MAX_IMAGES = 5
MAX_TOTAL_BYTES = 50 * 1024 * 1024
# Pl@ntNet organ -> graft view (habit is the whole plant; auto and other: no view-specific preprocessing)
ORGANS = {"leaf": "Leaf", "flower": "Flower", "fruit": "Fruit", "bark": "Stem", "habit": "Entire", "auto": "",
          "other": ""}
DEFAULT_RESULTS = 10
RELATED_IMAGES = 3


@dataclass(frozen=True)
class Query:
    project: str
    api_key: str | None
    nb_results: int
    lang: str
    include_related_images: bool
    no_reject: bool
    type: str
    detailed: bool

    @classmethod
    def parse(cls, project: str, params) -> Query:
        def flag(name: str) -> bool:
            value = params.get(name, "false").lower()
            if value not in ("true", "false", "1", "0"):
                raise HTTPException(400, f'"{name}" must be true or false, not "{value}"')
            return value in ("true", "1")

        results = params.get("nb-results", str(DEFAULT_RESULTS))
        if not WHOLE_NUMBER.fullmatch(results) or int(results) < 1:  # ASCII digits: "²".isdigit() is True
            raise HTTPException(400, f'"nb-results" must be a whole number from 1 to 999999, not "{results[:20]}"')
        kind = params.get("type", "kt")
        if kind not in ("kt", "legacy"):
            raise HTTPException(400, f'"type" must be kt or legacy, not "{kind}"')
        return cls(project, params.get("api-key"), int(results), params.get("lang", "en"),
                   flag("include-related-images"), flag("no-reject"), kind, flag("detailed"))


def plantnet_error(status: int, message: str) -> dict[str, Any]:
    return {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message}


Related = Callable[[str, str, int, str, str | None], list[dict]]


def plantnet_router(model_for: Callable[[str], Model], authorize: Callable[[str | None], None],
                    spend: Callable[[str | None, Response], int | None],
                    decode: Callable[[Model, list[UploadFile], list[str]], list], related: Related) -> APIRouter:
    """``model_for(project)`` (404 for an unknown project), ``authorize(api_key)`` (401 before any work),
    ``spend(api_key, response)`` -> identifications left today, or None on an open server (429 over the quota; sets
    the RateLimit headers), ``decode(model, uploads, views)`` -> images (raises 4xx), ``related(project, label, n,
    base_url, api_key)`` -> entries of the label's training photos (their URLs carry the key where keys are set).
    A request that fails, or that is answered "Species not found", costs no quota."""
    router = APIRouter()

    @router.post("/v2/identify/{project}", summary="Pl@ntNet-compatible identification")
    async def identify(project: str, request: Request, response: Response) -> dict[str, Any]:
        query = Query.parse(project, request.query_params)
        authorize(query.api_key)
        model = model_for(project)
        form = await request.form()
        images = [item for item in form.getlist("images") if isinstance(item, UploadFile)]
        organs = [str(o).strip().lower() for o in (form.getlist("organs") or request.query_params.getlist("organs"))]
        _check(images, organs)
        organs = organs or ["auto"] * len(images)
        views = [ORGANS[organ] for organ in organs]
        decoded = await run_in_threadpool(decode, model, images, views)
        names = [upload.filename or f"image {i + 1}" for i, upload in enumerate(images)]
        answer = await run_in_threadpool(identify_images, model, decoded, names, views, top=len(model.labels))
        if answer.unknown and not query.no_reject:
            raise HTTPException(404, "Species not found")  # before spend: a rejected identification costs no quota
        remaining = spend(query.api_key, response)
        entries = (lambda label, n: related(project, label, n, str(request.base_url), query.api_key)) \
            if query.include_related_images else None
        return _answer(answer, model, query, names, organs, remaining, entries)

    return router


def _check(images: Sequence[UploadFile], organs: Sequence[str]) -> None:
    if not images:
        raise HTTPException(400, 'no images: send 1 to 5 photos of one plant in the "images" field')
    if len(images) > MAX_IMAGES:
        raise HTTPException(400, f"{len(images)} images; at most {MAX_IMAGES} per identification")
    if organs and len(organs) != len(images):
        raise HTTPException(400, f"{len(organs)} organs for {len(images)} images; give one organ per image, in order")
    unknown = sorted(set(organs) - set(ORGANS))
    if unknown:
        raise HTTPException(400, f'unknown organ "{unknown[0]}"; use one of {", ".join(ORGANS)}')
    total = sum(upload.size or 0 for upload in images)
    if total > MAX_TOTAL_BYTES:
        raise HTTPException(413, f"{total:,} bytes of images; at most {MAX_TOTAL_BYTES:,} per identification")


def _names(name: str, authorship: str = "") -> dict[str, str]:
    return {"scientificNameWithoutAuthor": name, "scientificNameAuthorship": authorship,
            "scientificName": f"{name} {authorship}".strip()}


def _species(label: str, taxon: Taxon) -> dict[str, Any]:
    return {**_names(label, taxon.authorship), "genus": _names(taxon.genus), "family": _names(taxon.family),
            "commonNames": list(taxon.common_names)}


def _answer(answer: Identification, model: Model, query: Query, names: list[str], organs: list[str],
            remaining: int | None, related: Callable[[str, int], list[dict]] | None) -> dict[str, Any]:
    results = []
    for label, score in answer.ranking[: query.nb_results]:
        taxon = model.taxonomy.of(label)
        result: dict[str, Any] = {"score": round(score, 5), "species": _species(label, taxon)}
        if taxon.gbif:
            result["gbif"] = {"id": taxon.gbif}
        if related is not None:
            result["images"] = related(label, RELATED_IMAGES) if not results else []  # the top species' photos
        results.append(result)
    body: dict[str, Any] = {
        "query": {"project": query.project, "images": names, "organs": organs,
                  "includeRelatedImages": query.include_related_images, "noReject": query.no_reject,
                  "type": query.type},
        "language": query.lang,
        "preferedReferential": query.project,  # (sic) Pl@ntNet's spelling
        "bestMatch": results[0]["species"]["scientificName"] if results else "",
        "results": results,
        # organs as declared (graft does not predict organs): images sent as "auto" are not listed
        "predictedOrgans": [{"image": str(i), "filename": name, "organ": organ, "score": 1.0}
                            for i, (name, organ) in enumerate(zip(names, organs, strict=True)) if organ != "auto"],
        "version": f"graft {metadata.version('graft')} ({answer.engine})",
        "remainingIdentificationRequests": remaining,
    }
    if query.detailed:
        body["otherResults"] = {level: [{"score": round(p, 5), level: _names(name)} for name, p in ranking]
                                for level, ranking in (("genus", answer.genus), ("family", answer.family))}
    return body
