"""A model's record (its CS Model Config block) is written back in one call once this process
has registered the block's schema; what it writes must be what Block.save would."""

from __future__ import annotations

import uuid

from prefect.client.orchestration import get_client
from prefect_cs.blocks import model_config
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag


def full_record(title: str) -> ModelConfig:
    model = ModelConfig(
        owner="tests",
        title=title,
        repo_url="https://github.com/example/record.git",
        repo_tag="v2",
        secrets=["API_TOKEN"],
        memory="3Gi",
        cpu=2,
    )
    model.record(
        PublishedTag(tag="v1", python="/p/1", version="0.1", image="r/x@sha256:" + "a" * 64)
    )
    model.record(PublishedTag(tag="v2", python="/p/2", version="0.2", tier="docker"))
    model.staging_tag, model.latest_tag = "v2", "v1"
    return model


def test_the_fast_write_stores_what_block_save_stores():
    model = full_record("Record_Data")
    prefects = model._to_block_document(
        name=model.slug,
        block_schema_id=uuid.uuid4(),
        block_type_id=uuid.uuid4(),
        include_secrets=True,
    ).data
    assert model.document_data() == prefects


def test_a_record_saved_twice_reads_back_whole(platform):
    model = full_record("Record_Roundtrip")
    model.save_model()  # the first save of this process may register the schema
    again = ModelConfig.for_model("tests", "Record_Roundtrip")
    assert again.model_dump() == model.model_dump()
    assert type(again)._block_schema_id in model_config._SCHEMAS_REGISTERED_HERE
    again.staging_tag = None
    again.record(PublishedTag(tag="v3", python="/p/3", version="0.3"))
    again.save_model()  # the one-call write
    read = ModelConfig.for_model("tests", "Record_Roundtrip")
    assert read.model_dump() == again.model_dump()
    assert [e.tag for e in read.published_tags] == ["v1", "v2", "v3"]
    assert read.staging_tag is None  # a field set back to None is written, not merged away
    with get_client(sync_client=True) as client:
        stored = client.read_block_document(read._block_document_id)
    assert stored.block_schema_id == type(read)._block_schema_id
