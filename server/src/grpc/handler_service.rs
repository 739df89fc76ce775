//! `provisioning.v1.HandlerService`.

use provisioning_api::v1 as pb;
use provisioning_api::v1::handler_service_server::HandlerService;
use tonic::{Request, Response, Status};

use super::convert::{self, SecretView};
use crate::dispatch::test_run::TestRuns;
use crate::domain::handlers::{AuditQuery, HandlerQuery, HandlerRegistry};

/// Serves handler management over a `HandlerRegistry`, and test runs.
pub struct HandlerApi {
    registry: HandlerRegistry,
    tests: TestRuns,
}

impl HandlerApi {
    /// A service over `registry`, running tests with `tests`.
    pub fn new(registry: HandlerRegistry, tests: TestRuns) -> HandlerApi {
        HandlerApi { registry, tests }
    }
}

#[tonic::async_trait]
impl HandlerService for HandlerApi {
    async fn create(
        &self,
        request: Request<pb::CreateHandlerRequest>,
    ) -> Result<Response<pb::Handler>, Status> {
        let caller = super::caller(&request)?;
        let spec = convert::handler_spec(request.into_inner())?;
        let handler = self.registry.create(&caller, spec).await?;
        Ok(Response::new(convert::handler(handler, SecretView::Full)))
    }

    async fn get(
        &self,
        request: Request<pb::GetHandlerRequest>,
    ) -> Result<Response<pb::Handler>, Status> {
        let view = SecretView::for_reader(&super::caller(&request)?);
        let handler = self.registry.get(request.into_inner().id).await?;
        Ok(Response::new(convert::handler(handler, view)))
    }

    async fn list(
        &self,
        request: Request<pb::ListHandlersRequest>,
    ) -> Result<Response<pb::ListHandlersResponse>, Status> {
        let view = SecretView::for_reader(&super::caller(&request)?);
        let pb::ListHandlersRequest {
            event,
            phase,
            kind,
            status,
            page_size,
            page_token,
        } = request.into_inner();
        let query = HandlerQuery {
            event: (!event.is_empty()).then_some(event),
            phase: convert::optional_phase(phase, "phase")?,
            kind: convert::optional_kind(kind, "kind")?,
            status: convert::optional_status(status, "status")?,
            page_size,
            page_token,
        };
        let (handlers, next_page_token) = self.registry.list(query).await?;
        Ok(Response::new(pb::ListHandlersResponse {
            handlers: handlers
                .into_iter()
                .map(|h| convert::handler(h, view))
                .collect(),
            next_page_token,
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateHandlerRequest>,
    ) -> Result<Response<pb::Handler>, Status> {
        let caller = super::caller(&request)?;
        let (id, patch) = convert::handler_patch(request.into_inner())?;
        let (handler, secret_created) = self.registry.update(&caller, id, patch).await?;
        let view = if secret_created {
            SecretView::Full
        } else {
            SecretView::Masked
        };
        Ok(Response::new(convert::handler(handler, view)))
    }

    async fn set_status(
        &self,
        request: Request<pb::SetHandlerStatusRequest>,
    ) -> Result<Response<pb::Handler>, Status> {
        let caller = super::caller(&request)?;
        let pb::SetHandlerStatusRequest { id, status } = request.into_inner();
        let status = convert::optional_status(status, "status")?
            .ok_or_else(|| super::status::invalid_argument("status: required"))?;
        let handler = self.registry.set_status(&caller, id, status).await?;
        Ok(Response::new(convert::handler(handler, SecretView::Masked)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteHandlerRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = super::caller(&request)?;
        self.registry
            .delete(&caller, request.into_inner().id)
            .await?;
        Ok(Response::new(()))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::Handler>, Status> {
        let caller = super::caller(&request)?;
        let handler = self
            .registry
            .rotate_secret(&caller, request.into_inner().id)
            .await?;
        Ok(Response::new(convert::handler(handler, SecretView::Full)))
    }

    async fn list_event_types(
        &self,
        _request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        let event_types = self.registry.list_event_types().await?;
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: event_types.into_iter().map(convert::event_type).collect(),
        }))
    }

    async fn create_event_type(
        &self,
        request: Request<pb::CreateEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        let caller = super::caller(&request)?;
        let pb::CreateEventTypeRequest {
            name,
            description,
            schema_json,
        } = request.into_inner();
        let event_type = self
            .registry
            .create_event_type(&caller, name, description, schema_json)
            .await?;
        Ok(Response::new(convert::event_type(event_type)))
    }

    async fn update_event_type(
        &self,
        request: Request<pb::UpdateEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        let caller = super::caller(&request)?;
        let (name, patch) = convert::event_type_patch(request.into_inner())?;
        let event_type = self
            .registry
            .update_event_type(&caller, name, patch)
            .await?;
        Ok(Response::new(convert::event_type(event_type)))
    }

    async fn test(
        &self,
        request: Request<pb::TestHandlerRequest>,
    ) -> Result<Response<pb::TestHandlerResponse>, Status> {
        let caller = super::caller(&request)?;
        let (id, input) = convert::test_input(request.into_inner())?;
        let result = self.tests.run(&caller, id, input).await?;
        Ok(Response::new(convert::test_result(result)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let pb::ListAuditRequest {
            handler_id,
            page_size,
            page_token,
        } = request.into_inner();
        let query = AuditQuery {
            handler_id: (handler_id != 0).then_some(handler_id),
            page_size,
            page_token,
        };
        let (entries, next_page_token) = self.registry.list_audit(query).await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(convert::audit_entry).collect(),
            next_page_token,
        }))
    }
}
