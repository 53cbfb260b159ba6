//! The session's side of the chat layer: `rpc` methods named `roomcast.*` go to
//! `chat::rpc` (through `Services::chat_rpc`) for the connection's user; the answer is an
//! ordinary rpc reply (`{"data": ...}`) or an error with its message. Other rpc methods
//! keep the session's own answer.

use roomcast_proto::command::RpcRequest;
use roomcast_proto::RpcResult;

use super::{Services, Session};

impl<S: Services> Session<S> {
    pub(super) async fn chat_rpc(&mut self, id: u32, req: RpcRequest) {
        let user = self.identity.as_ref().expect("connected").user.clone();
        match self
            .node
            .chat_rpc(&user, &req.method, req.data.as_deref())
            .await
        {
            Ok(data) => self.reply(
                self.format()
                    .reply(id, "rpc", &RpcResult { data: Some(data) }),
            ),
            Err(e) => self.reply(self.format().error_message(id, e.code(), &e.to_string())),
        }
    }
}
