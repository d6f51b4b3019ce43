// A recursive-descent parser mirroring jinja2/parser.py. Precedence, lowest first:
//   x if c else y  <  or  <  and  <  not  <  comparisons, in, not in  <  + -  <  ~  <
//   * / // %  <  **  <  unary - +  <  primary with .attr [index] (call) | filter  is test
#include "chat/parser.h"

#include <set>

#include "util/error.h"

namespace fh1::jinja {
namespace {

constexpr int kMaxNesting = 256;  // deeper templates are rejected rather than overflowing the stack

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, &end, 0);
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& current() const { return tokens_[pos_]; }
  const Token& peek(size_t ahead = 1) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  bool at_op(const char* op) const {
    return current().type == TokenType::Operator && current().text == op;
  }
  bool at_name(const char* name) const {
    return current().type == TokenType::Name && current().text == name;
  }
  const Token& advance() {
    const Token& t = tokens_[pos_];
    if (pos_ + 1 < tokens_.size()) ++pos_;
    return t;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Name: return "'" + t.text + "'";
      case TokenType::Operator: return "'" + t.text + "'";
      case TokenType::String: return "string literal";
      case TokenType::Integer:
      case TokenType::Float: return "number " + t.text;
      default: return token_type_name(t.type);
    }
  }
  [[noreturn]] void fail(const std::string& what, int line = -1) const {
    throw Error("chat template syntax error, line " + std::to_string(line < 0 ? current().line : line) +
                ": " + what);
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    fail("expected " + expected + ", found " + describe(current()));
  }
  void expect_op(const char* op) {
    if (!at_op(op)) unexpected(std::string("'") + op + "'");
    advance();
  }
  std::string expect_name() {
    if (current().type != TokenType::Name) unexpected("a name");
    return advance().text;
  }
  void expect_block_end() {
    if (current().type != TokenType::BlockEnd) unexpected("'%}'");
    advance();
  }
  void enter(int line) {
    if (++nesting_ > kMaxNesting) fail("template nested more than " + std::to_string(kMaxNesting) + " levels deep", line);
  }

  // ---- statements ----

  // Parses until "{% <one of end_names>"; leaves the position after that name. With no end
  // names, parses to the end of the template.
  Body parse_body(const std::set<std::string>& end_names, std::string* found_end, int open_line) {
    Body body;
    while (true) {
      const Token& t = current();
      switch (t.type) {
        case TokenType::Text: {
          auto s = std::make_unique<Stmt>(StmtKind::Text, t.line);
          s->text = t.text;
          body.push_back(std::move(s));
          advance();
          break;
        }
        case TokenType::VarBegin: {
          advance();
          auto s = std::make_unique<Stmt>(StmtKind::Print, t.line);
          s->expr = parse_tuple(true);
          if (current().type != TokenType::VarEnd) unexpected("'}}'");
          advance();
          body.push_back(std::move(s));
          break;
        }
        case TokenType::BlockBegin: {
          advance();
          if (current().type == TokenType::Name && end_names.count(current().text)) {
            *found_end = advance().text;
            return body;
          }
          body.push_back(parse_statement());
          break;
        }
        case TokenType::End:
          if (!end_names.empty()) {
            std::string names;
            for (const auto& n : end_names) names += (names.empty() ? "'" : " or '") + n + "'";
            fail("missing " + names + " for the block opened on line " + std::to_string(open_line));
          }
          return body;
        default: unexpected("text or a tag");
      }
    }
  }

  StmtPtr parse_statement() {
    int line = current().line;
    if (current().type != TokenType::Name) unexpected("a statement name");
    std::string keyword = advance().text;
    enter(line);
    StmtPtr s;
    if (keyword == "if") s = parse_if(line);
    else if (keyword == "for") s = parse_for(line);
    else if (keyword == "set") s = parse_set(line);
    else if (keyword == "macro") s = parse_macro(line);
    else if (keyword == "filter") s = parse_filter_block(line);
    else if (keyword == "generation") {
      // transformers' {% generation %} marks assistant text for masks; it renders as its body.
      s = std::make_unique<Stmt>(StmtKind::Scope, line);
      expect_block_end();
      std::string end;
      s->body = parse_body({"endgeneration"}, &end, line);
      expect_block_end();
    } else if (keyword == "break" || keyword == "continue") {
      if (loop_depth_ == 0) fail("'" + keyword + "' outside of a for loop", line);
      s = std::make_unique<Stmt>(keyword == "break" ? StmtKind::Break : StmtKind::Continue, line);
      expect_block_end();
    } else if (keyword == "elif" || keyword == "else" || keyword.rfind("end", 0) == 0) {
      fail("unexpected '" + keyword + "' (no block is open that it could close)", line);
    } else if (keyword == "call" || keyword == "extends" || keyword == "include" || keyword == "import" ||
               keyword == "from" || keyword == "block" || keyword == "with" || keyword == "autoescape" ||
               keyword == "do" || keyword == "trans") {
      fail("'{% " + keyword + " %}' is not supported by this chat template engine", line);
    } else {
      fail("unknown statement '" + keyword + "'", line);
    }
    --nesting_;
    return s;
  }

  StmtPtr parse_if(int line) {
    auto s = std::make_unique<Stmt>(StmtKind::If, line);
    std::string end = "elif";
    while (end == "elif") {
      s->conditions.push_back(parse_tuple(true));
      expect_block_end();
      s->bodies.push_back(parse_body({"elif", "else", "endif"}, &end, line));
    }
    if (end == "else") {
      expect_block_end();
      s->else_body = parse_body({"endif"}, &end, line);
    }
    expect_block_end();
    return s;
  }

  std::vector<std::string> parse_target_names() {
    std::vector<std::string> names;
    bool parens = at_op("(");
    if (parens) advance();
    names.push_back(expect_name());
    while (at_op(",")) {
      advance();
      if (current().type != TokenType::Name) break;  // trailing comma
      names.push_back(expect_name());
    }
    if (parens) expect_op(")");
    return names;
  }

  StmtPtr parse_for(int line) {
    auto s = std::make_unique<Stmt>(StmtKind::For, line);
    s->targets = parse_target_names();
    if (!at_name("in")) unexpected("'in'");
    advance();
    s->expr = parse_tuple(false);
    if (at_name("if")) {
      advance();
      s->cond = parse_tuple(true);
    }
    if (at_name("recursive")) fail("recursive for loops are not supported");
    expect_block_end();
    std::string end;
    ++loop_depth_;
    s->body = parse_body({"else", "endfor"}, &end, line);
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      s->else_body = parse_body({"endfor"}, &end, line);
    }
    expect_block_end();
    return s;
  }

  StmtPtr parse_set(int line) {
    if (current().type == TokenType::Name && peek().type == TokenType::Operator && peek().text == ".") {
      auto s = std::make_unique<Stmt>(StmtKind::Set, line);
      s->text = advance().text;
      advance();
      s->attribute = expect_name();
      expect_op("=");
      s->expr = parse_tuple(true);
      expect_block_end();
      return s;
    }
    std::vector<std::string> names = parse_target_names();
    if (current().type == TokenType::BlockEnd) {
      if (names.size() != 1) fail("a block set takes exactly one name");
      auto s = std::make_unique<Stmt>(StmtKind::SetBlock, line);
      s->text = names[0];
      advance();
      std::string end;
      s->body = parse_body({"endset"}, &end, line);
      expect_block_end();
      return s;
    }
    if (at_op("|")) fail("filters on a block set are not supported");
    auto s = std::make_unique<Stmt>(StmtKind::Set, line);
    s->targets = std::move(names);
    expect_op("=");
    s->expr = parse_tuple(true);
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(int line) {
    auto s = std::make_unique<Stmt>(StmtKind::Macro, line);
    s->text = expect_name();
    expect_op("(");
    while (!at_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (at_op(")")) break;
      MacroParam p;
      p.name = expect_name();
      if (at_op("=")) {
        advance();
        p.default_value = parse_expression(true);
      } else if (!s->params.empty() && s->params.back().default_value) {
        fail("non-default macro argument '" + p.name + "' follows a default argument");
      }
      s->params.push_back(std::move(p));
    }
    advance();
    expect_block_end();
    std::string end;
    int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;  // break/continue cannot cross a macro
    s->body = parse_body({"endmacro"}, &end, line);
    loop_depth_ = saved_loop_depth;
    if (current().type == TokenType::Name) advance();  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block(int line) {
    auto s = std::make_unique<Stmt>(StmtKind::FilterBlock, line);
    auto hole = std::make_unique<Expr>(ExprKind::Name, line);
    hole->name = kFilterBlockInput;
    s->expr = parse_filter(std::move(hole), /*leading_pipe=*/false);
    while (at_op("|")) s->expr = parse_filter(std::move(s->expr), true);
    expect_block_end();
    std::string end;
    s->body = parse_body({"endfilter"}, &end, line);
    expect_block_end();
    return s;
  }

  // ---- expressions ----

  ExprPtr make(ExprKind kind, int line) { return std::make_unique<Expr>(kind, line); }

  // An expression, or several separated by commas (a tuple), as {{ }} and set accept.
  ExprPtr parse_tuple(bool with_condexpr) {
    int line = current().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!at_op(",")) return first;
    auto tuple = make(ExprKind::Tuple, line);
    tuple->items.push_back(std::move(first));
    while (at_op(",")) {
      advance();
      if (current().type == TokenType::BlockEnd || current().type == TokenType::VarEnd ||
          at_name("if")) {
        break;
      }
      tuple->items.push_back(parse_expression(with_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condexpr = true) {
    return with_condexpr ? parse_conditional() : parse_or();
  }

  ExprPtr parse_conditional() {
    enter(current().line);
    ExprPtr e = parse_or();
    while (at_name("if")) {
      auto c = make(ExprKind::Conditional, advance().line);
      c->cond = parse_or();
      if (at_name("else")) {
        advance();
        c->otherwise = parse_conditional();
      }
      c->then = std::move(e);
      e = std::move(c);
    }
    --nesting_;
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr left, ExprPtr right, int line) {
    auto b = make(ExprKind::Binary, line);
    b->name = op;
    b->object = std::move(left);
    b->then = std::move(right);
    return b;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (at_name("or")) {
      int line = advance().line;
      e = binary("or", std::move(e), parse_and(), line);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (at_name("and")) {
      int line = advance().line;
      e = binary("and", std::move(e), parse_not(), line);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (at_name("not")) {
      auto u = make(ExprKind::Unary, advance().line);
      u->name = "not";
      enter(u->line);
      u->object = parse_not();
      --nesting_;
      return u;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = current().line;
    ExprPtr left = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (current().type == TokenType::Operator &&
          (current().text == "==" || current().text == "!=" || current().text == "<" ||
           current().text == "<=" || current().text == ">" || current().text == ">=")) {
        op = advance().text;
      } else if (at_name("in")) {
        advance();
        op = "in";
      } else if (at_name("not") && peek().type == TokenType::Name && peek().text == "in") {
        advance();
        advance();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(ExprKind::Compare, line);
        cmp->object = std::move(left);
      }
      cmp->ops.push_back(op);
      cmp->keys.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(left);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (at_op("+") || at_op("-")) {
      const Token& t = advance();
      std::string op = t.text;
      e = binary(op, std::move(e), parse_concat(), t.line);
    }
    return e;
  }

  ExprPtr parse_concat() {
    int line = current().line;
    ExprPtr first = parse_math2();
    if (!at_op("~")) return first;
    auto c = make(ExprKind::Concat, line);
    c->items.push_back(std::move(first));
    while (at_op("~")) {
      advance();
      c->items.push_back(parse_math2());
    }
    return c;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const Token& t = advance();
      std::string op = t.text;
      e = binary(op, std::move(e), parse_pow(), t.line);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (at_op("**")) {
      int line = advance().line;
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    int line = current().line;
    enter(line);
    ExprPtr node;
    if (at_op("-") || at_op("+")) {
      node = make(ExprKind::Unary, line);
      node->name = advance().text;
      node->object = parse_unary(false);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    --nesting_;
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = current();
    switch (t.type) {
      case TokenType::Name: {
        advance();
        auto lit = make(ExprKind::Literal, t.line);
        if (t.text == "true" || t.text == "True") lit->value = Value(true);
        else if (t.text == "false" || t.text == "False") lit->value = Value(false);
        else if (t.text == "none" || t.text == "None") lit->value = Value::none();
        else {
          auto name = make(ExprKind::Name, t.line);
          name->name = t.text;
          return name;
        }
        return lit;
      }
      case TokenType::String: {
        auto lit = make(ExprKind::Literal, t.line);
        std::string s;
        while (current().type == TokenType::String) s += advance().text;  // "a" "b" is "ab"
        lit->value = Value(std::move(s));
        return lit;
      }
      case TokenType::Integer: {
        auto lit = make(ExprKind::Literal, t.line);
        try {
          lit->value = Value(static_cast<int64_t>(std::stoll(t.text)));
        } catch (const std::out_of_range&) {
          fail("integer literal " + t.text + " does not fit in 64 bits");
        }
        advance();
        return lit;
      }
      case TokenType::Float: {
        auto lit = make(ExprKind::Literal, t.line);
        lit->value = Value(std::stod(t.text));
        advance();
        return lit;
      }
      case TokenType::Operator:
        if (t.text == "(") return parse_parenthesized();
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default: break;
    }
    unexpected("an expression");
  }

  ExprPtr parse_parenthesized() {
    int line = advance().line;
    if (at_op(")")) {
      advance();
      return make(ExprKind::Tuple, line);
    }
    ExprPtr first = parse_expression(true);
    if (at_op(")")) {
      advance();
      return first;
    }
    auto tuple = make(ExprKind::Tuple, line);
    tuple->items.push_back(std::move(first));
    while (at_op(",")) {
      advance();
      if (at_op(")")) break;
      tuple->items.push_back(parse_expression(true));
    }
    expect_op(")");
    return tuple;
  }

  ExprPtr parse_list() {
    auto list = make(ExprKind::List, advance().line);
    while (!at_op("]")) {
      if (!list->items.empty()) expect_op(",");
      if (at_op("]")) break;
      list->items.push_back(parse_expression(true));
    }
    advance();
    return list;
  }

  ExprPtr parse_dict() {
    auto dict = make(ExprKind::Dict, advance().line);
    while (!at_op("}")) {
      if (!dict->keys.empty()) expect_op(",");
      if (at_op("}")) break;
      dict->keys.push_back(parse_expression(true));
      expect_op(":");
      dict->items.push_back(parse_expression(true));
    }
    advance();
    return dict;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (at_op(".")) {
        int line = advance().line;
        if (current().type == TokenType::Name) {
          auto g = make(ExprKind::GetAttr, line);
          g->name = advance().text;
          g->object = std::move(node);
          node = std::move(g);
        } else if (current().type == TokenType::Integer) {
          auto g = make(ExprKind::GetItem, line);
          auto index = make(ExprKind::Literal, line);
          index->value = Value(static_cast<int64_t>(std::stoll(advance().text)));
          g->object = std::move(node);
          g->then = std::move(index);
          node = std::move(g);
        } else {
          unexpected("an attribute name after '.'");
        }
      } else if (at_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (at_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    int line = advance().line;
    ExprPtr start, stop, step;
    bool is_slice = false;
    if (!at_op(":")) {
      start = parse_expression(true);
    }
    if (at_op(":")) {
      is_slice = true;
      advance();
      if (!at_op("]") && !at_op(":")) stop = parse_expression(true);
      if (at_op(":")) {
        advance();
        if (!at_op("]")) step = parse_expression(true);
      }
    }
    if (at_op(",")) fail("tuple subscripts are not supported");
    expect_op("]");
    if (!is_slice) {
      auto g = make(ExprKind::GetItem, line);
      g->object = std::move(node);
      g->then = std::move(start);
      return g;
    }
    auto s = make(ExprKind::Slice, line);
    s->object = std::move(node);
    s->cond = std::move(start);
    s->then = std::move(stop);
    s->otherwise = std::move(step);
    return s;
  }

  void parse_call_args(Expr& call) {
    expect_op("(");
    while (!at_op(")")) {
      if (!call.items.empty() || !call.kwargs.empty()) expect_op(",");
      if (at_op(")")) break;
      if (at_op("*") || at_op("**")) fail("*args and **kwargs in calls are not supported");
      if (current().type == TokenType::Name && peek().type == TokenType::Operator && peek().text == "=") {
        std::string key = advance().text;
        advance();
        call.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!call.kwargs.empty()) fail("positional argument follows keyword argument");
        call.items.push_back(parse_expression(true));
      }
    }
    advance();
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto call = make(ExprKind::Call, current().line);
    call->object = std::move(callee);
    parse_call_args(*call);
    return call;
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (at_op(".")) {
      advance();
      name += "." + expect_name();
    }
    return name;
  }

  ExprPtr parse_filter(ExprPtr node, bool leading_pipe) {
    if (leading_pipe) expect_op("|");
    auto f = make(ExprKind::Filter, current().line);
    f->name = parse_dotted_name();
    f->object = std::move(node);
    if (at_op("(")) parse_call_args(*f);
    return f;
  }

  ExprPtr parse_test(ExprPtr node) {
    auto t = make(ExprKind::Test, advance().line);
    if (at_name("not")) {
      advance();
      t->negated = true;
    }
    t->name = parse_dotted_name();
    t->object = std::move(node);
    const Token& c = current();
    bool arg_follows = c.type == TokenType::Name || c.type == TokenType::String ||
                       c.type == TokenType::Integer || c.type == TokenType::Float ||
                       (c.type == TokenType::Operator && (c.text == "[" || c.text == "{"));
    if (at_op("(")) {
      parse_call_args(*t);
    } else if (arg_follows && !at_name("else") && !at_name("or") && !at_name("and")) {
      // "x is divisibleby 3", "x is sameas none": one argument without parentheses.
      if (at_name("is")) fail("a test cannot take a test as its argument");
      t->items.push_back(parse_postfix(parse_primary()));
    }
    return t;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (at_op("|")) node = parse_filter(std::move(node), true);
      else if (at_name("is")) node = parse_test(std::move(node));
      else if (at_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_template(); }

}  // namespace fh1::jinja
