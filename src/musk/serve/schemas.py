"""The JSON the service takes and gives (they make its OpenAPI schema, at ``/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..search.records import Hit


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInput(Strict):
    image: str = Field(description="the image file's bytes as base64 (PNG, JPEG, TIFF, WebP or BMP), or a data URL")


class EmbeddingRequest(Strict):
    """OpenAI's embeddings request, plus images and MUSK's options."""

    model: str = Field(description="the served model's name (GET /v1/models)")
    input: str | list[str | ImageInput] = Field(description="texts, and images as {'image': '<base64>'} items")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: int | None = Field(None, description="not supported: MUSK's embeddings have one width")
    user: str | None = None
    with_head: bool = Field(True, description="project into the shared image-text space (musk embed --with_head)")
    normalize: bool = Field(True, description="L2-normalise (musk embed --normalize)")
    ms_aug: bool = Field(False, description="multi-scale image features (musk embed --ms_aug); images only")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ZeroShotRequest(Strict):
    images: list[str] = Field(min_length=1, description="base64 image files (or data URLs)")
    classes: list[str] = Field(min_length=1, description="class names, e.g. 'lung adenocarcinoma'")
    templates: list[str] | None = Field(None, description="prompt templates with {} for the class name")


class ZeroShotResult(BaseModel):
    index: int
    probabilities: list[float] = Field(description="one per class, in the order of classes")
    prediction: str


class ZeroShotResponse(BaseModel):
    model: str
    classes: list[str]
    data: list[ZeroShotResult]


class Filters(Strict):
    label: str | None = None
    case: str | None = None


class SearchRequest(Strict):
    text: str | None = Field(None, description="a text query, e.g. 'tumour budding at the invasive front'")
    image: str | None = Field(None, description="an image query: base64 image file (or data URL)")
    k: int = Field(20, ge=1, le=1000)
    per_slide: int | None = Field(None, ge=1, description="at most this many hits from one slide")
    filters: Filters | None = None
    exclude_case: str | None = Field(None, description="leave out this case's slides")
    templates: list[str] | None = Field(None, description="prompt templates for a text query")


class SearchResponse(BaseModel):
    hits: list[Hit]  # musk.search's own record: the service answers what `musk search` writes


class SlideSearchRequest(Strict):
    texts: list[str] = Field(min_length=1, description="one text, or several class prompts (slide zero-shot)")
    k: int = Field(10, ge=1, le=1000, description="slides returned")
    top_k: int | None = Field(None, ge=1, description="patches pooled per slide (mean of the top-K similarities)")
    filters: Filters | None = None
    templates: list[str] | None = None


class SlideHit(BaseModel):
    model_config = ConfigDict(extra="allow")  # per-class scores, when several texts are given

    rank: int
    slide: str
    score: float
    case: str | None = None
    label: str | None = None


class SlidesResponse(BaseModel):
    slides: list[SlideHit]


class HeatmapRequest(Strict):
    text: str | None = None
    image: str | None = None


class Heatmap(BaseModel):
    slide: str
    patch_size: int = Field(description="level-0 side of every patch")
    x: list[int]
    y: list[int]
    scores: list[float] = Field(description="each patch's similarity to the query")
