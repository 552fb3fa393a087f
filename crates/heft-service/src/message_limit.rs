//! Each method's message limit, enforced from the gRPC length prefix before
//! the body is read, and a budget for the few methods allowed large messages.
//!
//! tonic's own limit is per service, and its decoder reserves the length a
//! message declares before reading it: a few dozen calls declaring 10 MiB
//! each would hold hundreds of MiB before any handler could refuse them.
//! Here the body is watched as it arrives: every message's five-byte prefix
//! is checked against the method's limit (`heft_proto::codec`) before the
//! frame holding it reaches tonic, so an oversized call is refused after its
//! first five bytes however many arrive at once. Methods whose limit is
//! large (BatchCreateEntries) also take a slot of a small budget for the
//! whole call, response included; the rest wait briefly, then are refused
//! with a retry delay.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use heft_proto::{
    codec::{MAX_MESSAGE_BYTES, max_request_bytes},
    status::ErrorStatus,
};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

/// Calls with a large limit held at once, per service.
pub const LARGE_CALLS_AT_ONCE: usize = 2;
/// How long a large call waits for a slot before it is refused.
const LARGE_CALL_WAIT: Duration = Duration::from_secs(1);
/// The delay a refused large call is asked to wait.
const LARGE_CALL_RETRY_AFTER: Duration = Duration::from_secs(1);

const PREFIX_BYTES: usize = 5;

#[derive(Clone)]
pub struct MessageLimitLayer {
    large_calls: Arc<Semaphore>,
}

impl MessageLimitLayer {
    pub fn new(large_calls_at_once: usize) -> Self {
        Self {
            large_calls: Arc::new(Semaphore::new(large_calls_at_once.max(1))),
        }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            large_calls: self.large_calls.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MessageLimit<S> {
    inner: S,
    large_calls: Arc<Semaphore>,
}

impl<S> Service<Request<Body>> for MessageLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let limit = max_request_bytes(request.uri().path());
        let request = request.map(|body| Body::new(PrefixCheckedBody::new(body, limit)));
        if limit <= MAX_MESSAGE_BYTES {
            return Either::Left(self.inner.call(request));
        }
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let large_calls = self.large_calls.clone();
        Either::Right(Box::pin(async move {
            let permit =
                match tokio::time::timeout(LARGE_CALL_WAIT, large_calls.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Ok(large_calls_busy().into_http()),
                };
            let response = inner.call(request).await?;
            // A large request often has a large answer: the slot is held
            // until the answer is sent (or dropped).
            Ok(response.map(|body| {
                Body::new(HoldingPermit {
                    body,
                    _permit: permit,
                })
            }))
        }))
    }
}

fn large_calls_busy() -> Status {
    ErrorStatus {
        code: Code::ResourceExhausted,
        reason: "LARGE_CALLS_BUSY",
        message: "too many large calls at once; retry shortly",
        violations: &[],
        retry_after: Some(LARGE_CALL_RETRY_AFTER),
        metadata: None,
    }
    .to_status()
}

fn too_large(declared: usize, limit: usize) -> Status {
    let description = format!("message of {declared} bytes; this method accepts at most {limit}");
    ErrorStatus {
        code: Code::ResourceExhausted,
        reason: "MESSAGE_TOO_LARGE",
        message: &description,
        // The whole message is too large, not one field of it.
        violations: &[],
        retry_after: None,
        metadata: None,
    }
    .to_status()
}

/// A request body that checks each gRPC message's declared length before
/// passing on the frame that completes its prefix.
struct PrefixCheckedBody {
    body: Body,
    limit: usize,
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    payload_left: usize,
}

impl PrefixCheckedBody {
    fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            limit,
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            payload_left: 0,
        }
    }

    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(data.len());
                self.payload_left -= skipped;
                data = &data[skipped..];
                continue;
            }
            let taken = (PREFIX_BYTES - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&data[..taken]);
            self.prefix_len += taken;
            data = &data[taken..];
            if self.prefix_len == PREFIX_BYTES {
                self.prefix_len = 0;
                let [_, length @ ..] = self.prefix;
                let declared = u32::from_be_bytes(length) as usize;
                if declared > self.limit {
                    return Err(too_large(declared, self.limit));
                }
                self.payload_left = declared;
            }
        }
        Ok(())
    }
}

impl http_body::Body for PrefixCheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(refusal) = self.check(data)
        {
            return Poll::Ready(Some(Err(refusal)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds a large call's slot until it is done.
struct HoldingPermit {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HoldingPermit {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes
    }

    #[test]
    fn prefixes_are_checked_across_frames_and_messages() {
        let mut body = PrefixCheckedBody::new(Body::empty(), 10);
        let mut first = prefix(10);
        first.extend_from_slice(&[7; 10]);
        let second = prefix(11);
        // The first message passes, split anywhere; the second's prefix,
        // split across frames, is refused once whole.
        body.check(&first[..3]).expect("partial prefix");
        body.check(&first[3..]).expect("message within the limit");
        body.check(&second[..2]).expect("partial prefix");
        let refused = body.check(&second[2..]).expect_err("over the limit");
        assert_eq!(refused.code(), Code::ResourceExhausted);
    }

    #[test]
    fn a_frame_holding_several_messages_is_checked_whole() {
        let mut body = PrefixCheckedBody::new(Body::empty(), 4);
        let mut frame = prefix(2);
        frame.extend_from_slice(&[1, 2]);
        frame.extend(prefix(4));
        frame.extend_from_slice(&[1, 2, 3, 4]);
        body.check(&frame).expect("both within the limit");
        let mut frame = prefix(0);
        frame.extend(prefix(5));
        assert!(body.check(&frame).is_err());
    }
}
