//! What grpcurl and buf curl see of a service: its reflection.

/// Asks the reflection service at `url` (v1 and v1alpha) which services it
/// lists, asserts that they are exactly health, both reflection versions and
/// `own_service`, and that each listed symbol can be described.
pub async fn assert_reflection_serves_exactly(url: &str, own_service: &str) {
    use tonic_reflection::pb::{v1, v1alpha};

    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut expected = vec![
        own_service.to_owned(),
        "grpc.health.v1.Health".to_owned(),
        "grpc.reflection.v1.ServerReflection".to_owned(),
        "grpc.reflection.v1alpha.ServerReflection".to_owned(),
    ];
    expected.sort();

    let ask_v1 = |request| {
        let channel = channel.clone();
        async move {
            let request = v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            v1::server_reflection_client::ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1")
                .into_inner()
                .message()
                .await
                .expect("response")
                .and_then(|r| r.message_response)
                .expect("an answer")
        }
    };
    let ask_v1alpha = |request| {
        let channel = channel.clone();
        async move {
            let request = v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1alpha")
                .into_inner()
                .message()
                .await
                .expect("response")
                .and_then(|r| r.message_response)
                .expect("an answer")
        }
    };

    use v1::server_reflection_request::MessageRequest as V1Request;
    use v1::server_reflection_response::MessageResponse as V1Response;
    use v1alpha::server_reflection_request::MessageRequest as V1AlphaRequest;
    use v1alpha::server_reflection_response::MessageResponse as V1AlphaResponse;

    let V1Response::ListServicesResponse(list) =
        ask_v1(V1Request::ListServices(String::new())).await
    else {
        panic!("v1: expected a list of services");
    };
    let mut listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    assert_eq!(listed, expected, "v1 lists exactly this port's services");
    let V1AlphaResponse::ListServicesResponse(list) =
        ask_v1alpha(V1AlphaRequest::ListServices(String::new())).await
    else {
        panic!("v1alpha: expected a list of services");
    };
    let mut listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    assert_eq!(
        listed, expected,
        "v1alpha lists exactly this port's services"
    );

    for symbol in &expected {
        let answer = ask_v1(V1Request::FileContainingSymbol(symbol.clone())).await;
        assert!(
            matches!(&answer, V1Response::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty()),
            "v1 cannot describe {symbol}: {answer:?}"
        );
        let answer = ask_v1alpha(V1AlphaRequest::FileContainingSymbol(symbol.clone())).await;
        assert!(
            matches!(&answer, V1AlphaResponse::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty()),
            "v1alpha cannot describe {symbol}: {answer:?}"
        );
    }
}
