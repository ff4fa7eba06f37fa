//! ApiVersions (key 18): the APIs and version ranges this broker implements.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{encode_frame, ApiError, RequestContext, SUPPORTED_APIS};

fn api_list() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

pub fn handle(ctx: &RequestContext, _request: ApiVersionsRequest) -> Result<Bytes, ApiError> {
    let response = ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_list());
    ctx.respond(&response)
}

/// The answer to an ApiVersions version we do not know: version 0 of the response with
/// UNSUPPORTED_VERSION and our ranges, so the client can retry with a version we have.
pub fn unsupported_version_response(correlation_id: i32) -> Bytes {
    let response = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_list());
    // Version 0 of this response has only fields that are always encodable.
    encode_frame(ApiKey::ApiVersions, 0, correlation_id, &response).unwrap_or_else(|error| {
        tracing::error!(?error, "could not encode ApiVersions v0");
        Bytes::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn unsupported_version_answer_decodes_as_v0() {
        let mut frame = unsupported_version_response(42);
        let size = frame.get_i32();
        assert_eq!(size as usize, frame.len());
        assert_eq!(frame.get_i32(), 42);
        let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
        assert_eq!(response.error_code, 35);
        assert_eq!(response.api_keys.len(), SUPPORTED_APIS.len());
    }
}
