//! `compression`: gzip, brotli and zstd answers through Pingora's own compression engine
//! (`ResponseCompressionCtx`, in the downstream module [`LoomCompression`] that the gateway adds,
//! switched off, to every session in place of Pingora's identical default).
//!
//! The module reads `Accept-Encoding` before `request_filter` runs, while it is still off, so the
//! request step switches it on for this route and hands it the request headers again. The
//! response step switches it back off when the answer is too small or not of a listed content
//! type. Pingora itself never compresses an answer that already has a `Content-Encoding` the
//! client accepts, sets `Vary: Accept-Encoding`, and drops `Content-Length`.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::http::compression::Algorithm;
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::proxy::Session;
use serde::Deserialize;

use crate::config::units::SizeValue;
use crate::gateway::trailers::BodyBeforeTrailers;

const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/x-www-form-urlencoded",
    "application/wasm",
    "image/svg+xml",
    "application/*+json",
    "application/*+xml",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CompressionConfig {
    /// 1–9; 0 turns gzip off.
    pub gzip_level: u32,
    /// 1–11; 0 turns brotli off.
    pub brotli_level: u32,
    /// 1–22; 0 turns zstd off.
    pub zstd_level: u32,
    /// Answers whose `Content-Length` is below this are sent as they are.
    pub min_size: SizeValue,
    /// Media types to compress: exact (`application/json`), `type/*`, or `application/*+json`.
    pub content_types: Vec<String>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            gzip_level: 6,
            brotli_level: 5,
            zstd_level: 3,
            min_size: SizeValue(1024),
            content_types: DEFAULT_CONTENT_TYPES
                .iter()
                .map(|text| text.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaPattern {
    Exact(String),
    /// `text/*`: the top-level type.
    AnySubtype(String),
    /// `application/*+json`: the structured-syntax suffix.
    Suffix {
        top: String,
        suffix: String,
    },
}

impl MediaPattern {
    fn parse(text: &str) -> Option<MediaPattern> {
        let lower = text.trim().to_ascii_lowercase();
        let (top, sub) = lower.split_once('/')?;
        if top.is_empty() || sub.is_empty() || top.contains('*') {
            return None;
        }
        if sub == "*" {
            return Some(MediaPattern::AnySubtype(top.to_string()));
        }
        if let Some(suffix) = sub.strip_prefix("*+") {
            return Some(MediaPattern::Suffix {
                top: top.to_string(),
                suffix: format!("+{suffix}"),
            });
        }
        if sub.contains('*') {
            return None;
        }
        Some(MediaPattern::Exact(lower))
    }

    /// `media_type` is lowercase, without parameters.
    fn matches(&self, media_type: &str) -> bool {
        match self {
            MediaPattern::Exact(exact) => exact == media_type,
            MediaPattern::AnySubtype(top) => media_type
                .split_once('/')
                .is_some_and(|(media_top, _)| media_top == top),
            MediaPattern::Suffix { top, suffix } => media_type
                .split_once('/')
                .is_some_and(|(media_top, sub)| media_top == top && sub.ends_with(suffix.as_str())),
        }
    }
}

#[derive(Debug)]
pub struct Compression {
    gzip_level: u32,
    brotli_level: u32,
    zstd_level: u32,
    min_size: u64,
    content_types: Vec<MediaPattern>,
    config: CompressionConfig,
}

impl Compression {
    pub fn compile(
        config: CompressionConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<Compression> {
        for (field, level, max) in [
            ("gzip_level", config.gzip_level, 9),
            ("brotli_level", config.brotli_level, 11),
            ("zstd_level", config.zstd_level, 22),
        ] {
            if level > max {
                report(field, format!("must be between 0 (off) and {max}"));
            }
        }
        if config.gzip_level == 0 && config.brotli_level == 0 && config.zstd_level == 0 {
            report("gzip_level", "every algorithm is off".to_string());
        }
        let mut content_types = Vec::new();
        for (index, text) in config.content_types.iter().enumerate() {
            match MediaPattern::parse(text) {
                Some(pattern) => content_types.push(pattern),
                None => report(
                    &format!("content_types[{index}]"),
                    format!(
                        "\"{text}\" is not a media type (type/subtype, type/* or type/*+suffix)"
                    ),
                ),
            }
        }
        Some(Compression {
            gzip_level: config.gzip_level,
            brotli_level: config.brotli_level,
            zstd_level: config.zstd_level,
            min_size: config.min_size.0,
            content_types,
            config,
        })
    }

    /// Switches the module on for this request and lets it read `Accept-Encoding`.
    pub fn on_request(&self, session: &mut Session) {
        let request = session.downstream_session.req_header();
        let Some(module) = session.downstream_modules_ctx.get_mut::<LoomCompression>() else {
            return;
        };
        // Adjusting after the response headers went through would panic inside Pingora.
        if !module.is_header_phase() {
            return;
        }
        module.adjust_algorithm_level(Algorithm::Gzip, self.gzip_level);
        module.adjust_algorithm_level(Algorithm::Brotli, self.brotli_level);
        module.adjust_algorithm_level(Algorithm::Zstd, self.zstd_level);
        module.request_filter(request);
    }

    /// Switches the module off again for answers that should go out as they are.
    pub fn on_response(&self, session: &mut Session, response: &http::response::Parts) {
        if self.should_compress(response) {
            if response
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_none()
                && let Some(module) = session.downstream_modules_ctx.get_mut::<LoomCompression>()
            {
                module.armed = true;
            }
            return;
        }
        if let Some(module) = session.downstream_modules_ctx.get_mut::<LoomCompression>()
            && module.is_header_phase()
        {
            module.adjust_level(0);
        }
    }

    fn should_compress(&self, response: &http::response::Parts) -> bool {
        let too_small = response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .is_some_and(|length| length < self.min_size);
        if too_small {
            return false;
        }
        let Some(content_type) = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        self.content_types
            .iter()
            .any(|pattern| pattern.matches(&media_type))
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "gzip_level": self.gzip_level,
            "brotli_level": self.brotli_level,
            "zstd_level": self.zstd_level,
            "min_size": self.min_size,
            "content_types": self.config.content_types,
        })
    }
}

/// The per-request compression module: Pingora's own compression engine
/// (`ResponseCompressionCtx`, what its `ResponseCompression` module wraps), plus the end of
/// the brotli stream that engine leaves open.
///
/// Pingora 0.9.1's brotli encoder only flushes at the end of the body and never writes the
/// final (ISLAST) meta-block, so strict decoders (Python's `brotli.decompress`, for one) refuse
/// the answer while lenient ones (curl, browsers) accept it. After a flush the stream is
/// byte-aligned, so one byte, `0x03` (ISLAST = 1, ISLASTEMPTY = 1), ends it properly. `armed`
/// is set by the compression policy only when the upstream's answer had no
/// `Content-Encoding` of its own, so an upstream's finished brotli stream is never touched.
/// One module does both, so a request costs what Pingora's default module costs. For the same
/// reason it also carries the gateway's [`BodyBeforeTrailers`]: it is the one module that
/// sees every body task as Pingora writes it.
pub struct LoomCompression {
    engine: ResponseCompressionCtx,
    armed: bool,
    brotli: bool,
    finished: bool,
    pub body_before_trailers: BodyBeforeTrailers,
}

impl std::ops::Deref for LoomCompression {
    type Target = ResponseCompressionCtx;

    fn deref(&self) -> &ResponseCompressionCtx {
        &self.engine
    }
}

impl std::ops::DerefMut for LoomCompression {
    fn deref_mut(&mut self) -> &mut ResponseCompressionCtx {
        &mut self.engine
    }
}

/// Adds [`LoomCompression`], switched off, to every session (in place of Pingora's default
/// `ResponseCompression`).
pub struct LoomCompressionBuilder;

impl HttpModuleBuilder for LoomCompressionBuilder {
    fn order(&self) -> i16 {
        // Where Pingora puts its own compression module: after most other filters.
        i16::MIN / 2
    }

    fn init(&self) -> Module {
        Box::new(LoomCompression {
            engine: ResponseCompressionCtx::new(0, false, false),
            armed: false,
            brotli: false,
            finished: false,
            body_before_trailers: BodyBeforeTrailers::default(),
        })
    }
}

/// The meta-block header that ends a brotli stream after a flush.
const BROTLI_LAST_EMPTY_METABLOCK: u8 = 0x03;

impl LoomCompression {
    /// Appends the end of the brotli stream to the last compressed bytes, once.
    fn finish_brotli(&mut self, last: Option<Bytes>) -> Option<Bytes> {
        if !self.brotli || self.finished {
            return last;
        }
        self.finished = true;
        let mut bytes = Vec::with_capacity(last.as_ref().map_or(0, Bytes::len) + 1);
        if let Some(chunk) = &last {
            bytes.extend_from_slice(chunk);
        }
        bytes.push(BROTLI_LAST_EMPTY_METABLOCK);
        Some(Bytes::from(bytes))
    }
}

#[async_trait::async_trait]
impl HttpModule for LoomCompression {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn request_header_filter(&mut self, request: &mut RequestHeader) -> pingora::Result<()> {
        self.engine.request_filter(request);
        Ok(())
    }

    async fn response_header_filter(
        &mut self,
        response: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.engine.response_header_filter(response, end_of_stream);
        self.brotli = self.armed
            && !end_of_stream
            && response
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"br"));
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        // First, so that held body it adds is compressed with the rest.
        self.body_before_trailers.on_body_task(body);
        if !self.engine.is_enabled() {
            return Ok(());
        }
        let compressed = self
            .engine
            .response_body_filter(body.as_ref(), end_of_stream);
        if compressed.is_some() {
            *body = compressed;
        }
        if end_of_stream {
            *body = self.finish_brotli(body.take());
        }
        Ok(())
    }

    fn response_trailer_filter(
        &mut self,
        _trailers: &mut Option<Box<http::HeaderMap>>,
    ) -> pingora::Result<Option<Bytes>> {
        self.body_before_trailers.on_trailers()?;
        Ok(None)
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        if !self.engine.is_enabled() {
            return Ok(None);
        }
        // The body ended without an end-of-stream chunk: flush what the encoder holds.
        let flushed = self.engine.response_body_filter(None, true);
        Ok(self.finish_brotli(flushed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(content_type: &str, length: Option<usize>) -> ResponseHeader {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response
            .insert_header("content-type", content_type.to_string())
            .unwrap();
        if let Some(length) = length {
            response
                .insert_header("content-length", length.to_string())
                .unwrap();
        }
        response
    }

    #[test]
    fn size_and_content_type_decide() {
        let policy = Compression::compile(CompressionConfig::default(), &mut |field, message| {
            panic!("{field}: {message}")
        })
        .unwrap();
        assert!(policy.should_compress(&response("application/json", Some(4096))));
        assert!(policy.should_compress(&response("text/html; charset=utf-8", None)));
        assert!(policy.should_compress(&response("application/problem+json", Some(2048))));
        assert!(!policy.should_compress(&response("application/json", Some(100))));
        assert!(!policy.should_compress(&response("image/png", Some(100_000))));
        assert!(!policy.should_compress(&ResponseHeader::build(200, None).unwrap()));
    }

    #[test]
    fn bad_levels_and_types_are_reported() {
        let config = CompressionConfig {
            gzip_level: 10,
            content_types: vec!["json".into()],
            ..CompressionConfig::default()
        };
        let mut fields = Vec::new();
        Compression::compile(config, &mut |field, _| fields.push(field.to_string()));
        assert_eq!(fields, ["gzip_level", "content_types[0]"]);
    }
}
