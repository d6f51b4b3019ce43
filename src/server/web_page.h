// The chat page served at "/" (src/server/web/index.html, compiled into the binary).
#pragma once

#include <string>

namespace fh1::server {

const std::string& chat_page_html();

}  // namespace fh1::server
